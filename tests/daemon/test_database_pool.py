"""
The pool's connection as a reactor selectable, against a psycopg2
connection that broke: what the reactor is told, without a server.
"""

from __future__ import annotations

import psycopg2
from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from emaild.db.pool import Connection


class _BrokenPsycopgConnection:
    """A connection whose server went away: libpq gave its socket up
    (fileno -1) but psycopg2 has not marked it closed."""

    closed = 0
    notifies: list = []

    def __init__(self, socket: int = -1):
        self.socket = socket

    def poll(self):
        raise psycopg2.OperationalError("server closed the connection unexpectedly")

    def fileno(self):
        return self.socket


class BrokenConnectionReadTests(unittest.TestCase):
    def _connection(self, pg) -> tuple[Connection, MemoryReactorClock]:
        reactor = MemoryReactorClock()
        connection = Connection(reactor=reactor)
        connection._connection = pg
        return connection, reactor

    def test_a_broken_socket_is_reported_lost_not_watched_again(self):
        # the regression: addReader(fd -1) raised ValueError in the reactor,
        # logged as an unhandled error on every PostgreSQL restart
        connection, reactor = self._connection(_BrokenPsycopgConnection())
        reactor.addReader(connection)
        running = connection._pollingD = defer.Deferred()
        failures = []
        running.addErrback(failures.append)

        why = connection.doRead()

        self.assertIsInstance(why, error.ConnectionLost)
        self.assertNotIn(connection, reactor.getReaders())
        reactor.advance(0)
        self.assertTrue(failures[0].check(psycopg2.OperationalError))

    def test_a_live_connection_is_watched_for_notifies(self):
        class Live(_BrokenPsycopgConnection):
            def poll(self):
                return psycopg2.extensions.POLL_OK

        connection, reactor = self._connection(Live(socket=7))
        self.assertIsNone(connection.doRead())
        self.assertIn(connection, reactor.getReaders())
