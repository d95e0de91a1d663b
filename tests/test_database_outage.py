"""
PostgreSQL restarts while the daemon is sending: queries fail fast during
the outage, /healthz says so, and the queue resumes by itself afterwards
with nothing lost and nothing sent twice.
"""

from __future__ import annotations

import collections
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from emaild.db.database import DatabaseUnavailable
from emaild.db.embedded import EmbeddedPostgres
from emaild.service import Emaild
from tests.relay import Relay
from tests.support import http_get, make_config, wait_for


class DatabaseOutageTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        root = Path(tempfile.mkdtemp(prefix="emaild-outage-"))
        self.pg = EmbeddedPostgres(root / "pgdata", database="emaild")
        self.dsn = self.pg.start()
        self.addCleanup(self.pg.destroy)
        self.tmp = root

    @defer.inlineCallbacks
    def test_postgres_restart_during_sending(self):
        relay = Relay()
        port = relay.start()
        self.addCleanup(relay.stop)
        config = make_config(
            self.tmp, self.pg.dsn(),
            relay={"transport": "smtp", "host": "127.0.0.1", "port": port, "tls": "none",
                   "rate": 40, "burst": 2, "poll_interval": "1s"},
            http={"endpoint": "tcp:0:interface=127.0.0.1"})
        service = Emaild(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        yield service.ready
        http_port = service.getServiceNamed("http")._waitingForPort.result.getHost().port
        count = 150
        yield defer.ensureDeferred(service.outbox.enqueue(
            "plain", [(f"r{i}@example.org", {"subject": "s", "body": "b"}) for i in range(count)]))
        yield wait_for(lambda: len(relay.accepted) >= 30)

        yield threads.deferToThread(self.pg.stop, "fast")
        stopped_at = time.monotonic()
        # fails fast rather than hanging
        started = time.monotonic()
        with self.assertRaises(DatabaseUnavailable):
            yield service.db.runQuery("SELECT 1")
        self.assertLess(time.monotonic() - started, 2.0)
        status, _, body = yield http_get(f"http://127.0.0.1:{http_port}/healthz")
        self.assertEqual(status, 503)
        self.assertEqual(body["parts"]["database"]["state"], "down")
        yield task.deferLater(reactor, 2.0, lambda: None)
        self.assertGreater(time.monotonic() - stopped_at, 2.0)

        yield threads.deferToThread(self.pg.start)
        yield wait_for(lambda: len(relay.accepted) >= count, timeout=60)

        def all_sent():
            d = service.db.runQuery("SELECT count(*) FROM outbox WHERE state = 'sent'")
            d.addCallbacks(lambda rows: rows[0][0] == count, lambda _: False)
            return d

        yield wait_for(all_sent, timeout=30)
        copies = collections.Counter(m.recipients[0] for m in relay.accepted)
        self.assertEqual(len(copies), count)
        self.assertEqual(max(copies.values()), 1, "a message was sent twice")
        status, _, body = yield http_get(f"http://127.0.0.1:{http_port}/healthz")
        self.assertEqual(status, 200)
