"""
Opening the database against a server that accepts connections and never
answers (a hung PostgreSQL, a wrong port that a firewall holds open):
start() gives up with a clear error instead of waiting for ever.
"""

from __future__ import annotations

import time

from twisted.internet import protocol, reactor
from twisted.trial import unittest

from emaild.db.database import Database, DatabaseUnavailable


class _Silent(protocol.Protocol):
    def connectionMade(self):  # noqa: N802 (Twisted API)
        self.factory.connections.append(self.transport)


class StartAgainstASilentServerTests(unittest.TestCase):
    timeout = 20  # without the start-up timeout, start() never returns
    def setUp(self):
        factory = protocol.Factory.forProtocol(_Silent)
        factory.connections = []
        self.connections = factory.connections
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(lambda: [t.abortConnection() for t in self.connections])

    async def test_start_gives_up_and_says_why(self):
        port = self.port.getHost().port
        db = Database(reactor, f"host=127.0.0.1 port={port} dbname=emaild user=emaild "
                               "password=secret", pool_size=2)
        db.connect_timeout = 0.5
        started = time.monotonic()
        with self.assertRaises(DatabaseUnavailable) as raised:
            await db.start()
        self.assertLess(time.monotonic() - started, 5)
        message = str(raised.exception)
        self.assertIn("no answer within 0.5 s", message)
        self.assertNotIn("secret", message)
        self.assertTrue(self.connections, "the pool never reached the server")
