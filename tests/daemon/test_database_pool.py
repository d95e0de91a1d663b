"""
The pooled connections when libpq closes their socket by itself, as it does
when it reads the end of the stream from a server that went away: inside an
execute, or inside a poll that then reports nothing wrong.  The connection
must then count as lost (so that it reconnects), and it must never stay
registered in the reactor under a descriptor that is closed: the next socket
to get that number would never be watched, and every later test run in the
same reactor would fail in its clean-up.  Then the reconnection loop itself:
bounded attempts, and nothing done after the database was closed.

The psycopg2 connection is a stand-in on one end of a socketpair, so each
case happens every time (against a real server it is a race).
"""

from __future__ import annotations

import os
import socket

import attrs
import psycopg2
from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial import unittest

from emaild.db.pool import Connection
from emaild.db.reconnect import CONNECT_TIMEOUT, Detector
from tests.support import wait_for


class StandIn:
    """
    A psycopg2 async connection with nothing behind it: its socket is one
    end of a socketpair, and C{drop_in} names the call ("execute" or
    "poll") in which it closes that socket as libpq does on EOF.
    """

    def __init__(self):
        self.socket, self.peer = socket.socketpair()
        self.closed = 0
        self.notifies: list = []
        self.drop_in: str | None = None

    def fileno(self) -> int:
        return self.socket.fileno()  # -1 once closed, like PQsocket

    def drop(self) -> None:
        self.socket.close()

    def poll(self):
        if self.drop_in == "poll":
            self.drop()
        elif self.socket.fileno() >= 0:
            self.socket.setblocking(False)
            try:
                self.socket.recv(4096)
            except BlockingIOError:
                pass
        return psycopg2.extensions.POLL_OK

    def cursor(self):
        return _StandInCursor(self)

    def close(self) -> None:
        self.closed = 1
        self.socket.close()
        self.peer.close()


@attrs.define
class _StandInCursor:
    connection: StandIn

    def execute(self, sql, params=None) -> None:
        if "\x00" in sql:
            raise ValueError("A string literal cannot contain NUL characters.")
        if self.connection.drop_in == "execute":
            self.connection.drop()
            raise psycopg2.OperationalError("server closed the connection unexpectedly")

    def fetchall(self):
        return [(1,)]


class RecordingDetector(Detector):
    """Notices deaths as the pool's detector does, but never reconnects."""

    def __init__(self):
        super().__init__(reactor)
        self.lost: list[Failure] = []

    def startReconnecting(self, f):  # noqa: N802 (txpostgres API)
        self.lost.append(f)


class _Reader:
    """An IReadDescriptor on a raw descriptor, counting its reads."""

    def __init__(self, fd: int):
        self.fd = fd
        self.reads = 0

    def fileno(self) -> int:
        return self.fd

    def doRead(self):  # noqa: N802 (reactor API)
        self.reads += 1
        os.read(self.fd, 4096)

    def connectionLost(self, reason):  # noqa: N802 (reactor API)
        pass

    def logPrefix(self) -> str:  # noqa: N802 (reactor API)
        return "reader"


class SocketClosedByLibpqTests(unittest.TestCase):
    async def connected(self, detector=None) -> tuple[Connection, StandIn]:
        stand_in = StandIn()

        class StandInConnection(Connection):
            connectionFactory = staticmethod(lambda *a, **kw: stand_in)  # noqa: N815

        connection = StandInConnection(reactor, detector=detector)
        await connection.connect("dbname=none")
        self.addCleanup(connection.close)
        return connection, stand_in

    async def test_socket_closed_inside_execute_is_not_left_watched(self):
        connection, stand_in = await self.connected()
        number = stand_in.fileno()
        stand_in.drop_in = "execute"
        with self.assertRaises(psycopg2.OperationalError):
            await connection.runQuery("SELECT 1")
        self.assertNotIn(connection, reactor.getReaders())
        # the kernel hands the freed number to the next socket: the reactor
        # must watch that one
        mine, theirs = socket.socketpair()
        self.addCleanup(theirs.close)
        if mine.fileno() != number:
            os.dup2(mine.fileno(), number)
            mine.close()
        else:
            mine.detach()
        self.addCleanup(os.close, number)
        reader = _Reader(number)
        reactor.addReader(reader)
        self.addCleanup(reactor.removeReader, reader)
        theirs.send(b"x")
        await wait_for(lambda: reader.reads, timeout=5)

    async def test_poll_that_closes_the_socket_is_a_lost_connection(self):
        detector = RecordingDetector()
        connection, stand_in = await self.connected(detector)
        stand_in.drop_in = "poll"
        stand_in.peer.send(b"the server's goodbye")  # the reactor reads: poll
        await wait_for(lambda: detector.lost, timeout=5)
        self.assertTrue(detector.connectionIsDead)
        self.assertTrue(detector.lost[0].check(psycopg2.OperationalError))
        self.assertNotIn(connection, reactor.getReaders())

    async def test_query_whose_poll_closed_the_socket_marks_the_connection_dead(self):
        detector = RecordingDetector()
        connection, stand_in = await self.connected(detector)
        stand_in.drop_in = "poll"
        # the answer had arrived whole: the query succeeds, the connection
        # is dead all the same and must not be handed out as alive
        self.assertEqual(await connection.runQuery("SELECT 1"), [(1,)])
        self.assertTrue(detector.connectionIsDead)
        self.assertNotIn(connection, reactor.getReaders())

    async def test_healthy_connection_is_watched_again_after_a_query(self):
        connection, stand_in = await self.connected(RecordingDetector())
        self.assertEqual(await connection.runQuery("SELECT 1"), [(1,)])
        self.assertIn(connection, reactor.getReaders())
        with self.assertRaises(ValueError):
            # refused by psycopg2 before sending: still a healthy connection
            await connection.runQuery("SELECT '\x00'")
        self.assertIn(connection, reactor.getReaders())


class _Reconnectable:
    """What a Detector reconnects: each connect is an attempt left pending."""

    def __init__(self):
        self.attempts: list[defer.Deferred] = []
        self.closes = 0

    def connect(self, *args, **kwargs) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.attempts.append(d)
        return d

    def close(self) -> None:
        # as txpostgres' Connection.close: a connect in progress fails
        self.closes += 1
        for d in self.attempts:
            if not d.called:
                d.errback(ConnectionDone())


class ReconnectionLoopTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.detector = Detector(self.clock)
        self.target = _Reconnectable()
        self.detector.setReconnectable(self.target)
        self.recovered: list[int] = []
        self.detector.addRecoveryHandler(lambda: self.recovered.append(1))
        self.detector.checkForDeadConnection(Failure(psycopg2.OperationalError("gone")))
        self.clock.advance(0)  # the first attempt is at once
        self.assertEqual(len(self.target.attempts), 1)

    def test_attempt_that_succeeds_after_the_database_closed_is_undone(self):
        self.detector.stop()
        self.target.attempts[0].callback(None)
        self.assertEqual(self.recovered, [])
        self.assertTrue(self.detector.connectionIsDead)
        # closed once by reconnect() before connecting, once for the late success
        self.assertEqual(self.target.closes, 2)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_attempt_that_never_answers_is_abandoned_and_tried_again(self):
        waiter = self.detector.reconnect_now()  # joins the attempt in flight
        self.assertNoResult(waiter)
        self.clock.advance(CONNECT_TIMEOUT)
        self.assertIs(self.successResultOf(waiter), False)
        self.clock.advance(5.0)  # the next attempt, on the backoff schedule
        self.assertEqual(len(self.target.attempts), 2)
        self.target.attempts[1].callback(None)
        self.assertEqual(self.recovered, [1])
        self.assertFalse(self.detector.connectionIsDead)

    def test_attempt_that_answers_in_time_leaves_no_timer(self):
        self.target.attempts[0].callback(None)
        self.assertEqual(self.recovered, [1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_leaves_no_timer(self):
        self.detector.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
