"""
The service tree's order, with fake parts: the database service starts its
children only once the database is open (and their own asynchronous start-up
is done), stops them in reverse order, each finished before the next, and
closes the database last; the daemon stops its listeners before all that.
Twisted's contract: startService returns nothing, stopService a Deferred.
"""

from __future__ import annotations

from twisted.application import service
from twisted.internet import defer, reactor
from twisted.trial import unittest

from emaild.readiness import FAILED, READY, STARTING, Readiness
from emaild.service import DatabaseService, Emaild
from tests.support import DatabaseTestCase, http_get


class FakeHomeServer:
    """What the database service asks of the HomeServer, under test control."""

    owns_database = True

    def __init__(self, log: list):
        self.log = log
        self.readiness = Readiness()
        self.opened: defer.Deferred = defer.Deferred()
        self.stopped_reactor = False

    def get_readiness(self):
        return self.readiness

    async def open_database(self):
        self.log.append("open database")
        await self.opened
        self.log.append("database open")

    async def close_database(self):
        self.log.append("close database")

    def get_reactor(self):
        return self

    running = True

    def stop(self):
        self.stopped_reactor = True

    def get_transport(self):
        return type("T", (), {"name": "fake"})()

    def get_config(self):
        return {"relay": {"rate": 1}}


class Part(service.Service):
    """A child that logs, with an optional asynchronous start and stop."""

    def __init__(self, name: str, log: list, async_start=False):
        self.setName(name)
        self.log = log
        self.starting = defer.Deferred() if async_start else None
        self.stopping: defer.Deferred | None = None

    def startService(self):  # noqa: N802
        super().startService()
        self.log.append(f"start {self.name}")

    def stopService(self):  # noqa: N802
        super().stopService()
        self.log.append(f"stop {self.name}")
        self.stopping = defer.Deferred()
        self.stopping.addCallback(lambda _: self.log.append(f"{self.name} stopped"))
        return self.stopping


class DatabaseServiceTests(unittest.TestCase):
    def setUp(self):
        self.log: list = []
        self.hs = FakeHomeServer(self.log)
        self.tree = DatabaseService(self.hs)
        self.a = Part("a", self.log)
        self.b = Part("b", self.log, async_start=True)
        self.a.setServiceParent(self.tree)
        self.b.setServiceParent(self.tree)

    def test_children_start_once_the_database_is_open(self):
        self.assertIsNone(self.tree.startService())
        self.assertTrue(self.tree.running)
        self.assertEqual(self.log, ["open database"])
        self.assertFalse(self.a.running)
        self.assertEqual(self.hs.readiness.state, STARTING)
        self.hs.opened.callback(None)
        self.assertEqual(self.log, ["open database", "database open", "start a", "start b"])
        # b has not finished its own start-up: not ready yet
        self.assertEqual(self.hs.readiness.state, STARTING)
        self.b.starting.callback(None)
        self.assertEqual(self.hs.readiness.state, READY)
        self.assertTrue(self.successResultOf(self.hs.readiness.when_ready()) is None)

    def test_children_stop_in_reverse_one_after_the_other_then_the_database_closes(self):
        self.tree.startService()
        self.hs.opened.callback(None)
        self.b.starting.callback(None)
        del self.log[:]
        stopped = self.tree.stopService()
        self.assertIsInstance(stopped, defer.Deferred)
        self.assertEqual(self.log, ["stop b"])  # a waits for b
        self.b.stopping.callback(None)
        self.assertEqual(self.log, ["stop b", "b stopped", "stop a"])
        self.assertNoResult(stopped)
        self.a.stopping.callback(None)
        self.assertEqual(self.log[-2:], ["a stopped", "close database"])
        self.successResultOf(stopped)

    def test_stopped_while_opening_starts_nothing_and_closes_the_database(self):
        self.tree.startService()
        stopped = self.tree.stopService()
        self.assertNoResult(stopped)  # the open in progress finishes first
        self.hs.opened.callback(None)
        self.successResultOf(stopped)
        self.assertEqual(self.log, ["open database", "database open", "close database"])
        self.assertNotEqual(self.hs.readiness.state, READY)

    def test_a_failed_open_stops_the_process_and_starts_nothing(self):
        self.tree.startService()
        waiting = self.hs.readiness.when_ready()
        self.hs.opened.errback(RuntimeError("no such database"))
        self.assertEqual(self.hs.readiness.state, FAILED)
        self.assertIn("no such database", self.hs.readiness.step)
        self.assertTrue(self.hs.stopped_reactor)
        self.assertFalse(self.a.running)
        self.failureResultOf(waiting, RuntimeError)

    def test_a_child_that_cannot_start_fails_the_start(self):
        def broken():
            raise OSError("no such maildir")

        self.a.startService = broken
        self.tree.startService()
        self.hs.opened.callback(None)
        self.assertEqual(self.hs.readiness.state, FAILED)
        self.assertIn("no such maildir", self.hs.readiness.step)
        self.assertTrue(self.hs.stopped_reactor)
        self.flushLoggedErrors()


class DaemonTreeTests(DatabaseTestCase):
    """The real tree on the test's database."""

    async def start(self):
        cfg = self.config(http={"endpoint": "tcp:0:interface=127.0.0.1"})
        self.daemon = Emaild(cfg, reactor, hs=self.homeserver(cfg))
        self.assertIsNone(self.daemon.startService())
        self.addCleanup(lambda: self.daemon.running and self.daemon.stopService())
        await self.daemon.ready
        return self.daemon

    @defer.inlineCallbacks
    def test_the_tree(self):
        daemon = yield defer.ensureDeferred(self.start())
        self.assertEqual([s.name for s in daemon], ["database", "http", "smtp"])
        self.assertEqual([s.name for s in daemon.database], ["relay", "hold-expiry", "error-reports", "rosters", "digest", "sender"])
        self.assertTrue(all(s.running for s in daemon.database))
        yield daemon.stopService()

    @defer.inlineCallbacks
    def test_listeners_stop_before_the_sender(self):
        daemon = yield defer.ensureDeferred(self.start())
        port = daemon.getServiceNamed("http")._waitingForPort.result.getHost().port
        status, _, body = yield http_get(f"http://127.0.0.1:{port}/healthz")
        self.assertEqual((status, body["status"]), (200, "ok"))
        seen = {}
        stop_sender = daemon.sender.stopService

        def record():
            seen["listening"] = {s.name: s.running for s in daemon if s.name != "database"}
            seen["readiness"] = daemon.readiness.state
            return stop_sender()

        daemon.sender.stopService = record
        yield daemon.stopService()
        self.assertEqual(seen, {"listening": {"http": False, "smtp": False},
                                "readiness": "stopping"})
        self.assertFalse(daemon.sender.running)
