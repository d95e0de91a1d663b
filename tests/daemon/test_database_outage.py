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
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from emaild.db.database import DatabaseUnavailable
from emaild.db.embedded import EmbeddedPostgres
from emaild.service import Emaild
from tests.dnsserver import ZoneServer, txt
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

    def test_postgres_restart_during_sending(self):
        return _stopped_in_cleanup(self, self._restart_during_sending())

    async def _restart_during_sending(self):
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
        await service.ready
        http_port = service.getServiceNamed("http")._waitingForPort.result.getHost().port
        count = 150
        await defer.ensureDeferred(service.outbox.enqueue(
            "plain", [(f"r{i}@example.org", {"subject": "s", "body": "b"}) for i in range(count)]))
        await wait_for(lambda: len(relay.accepted) >= 30)

        await threads.deferToThread(self.pg.stop, "fast")
        stopped_at = time.monotonic()
        # fails fast rather than hanging
        started = time.monotonic()
        with self.assertRaises(DatabaseUnavailable):
            await service.db.runQuery("SELECT 1")
        self.assertLess(time.monotonic() - started, 2.0)
        status, _, body = await http_get(f"http://127.0.0.1:{http_port}/healthz")
        self.assertEqual(status, 503)
        self.assertEqual(body["parts"]["database"]["state"], "down")
        await task.deferLater(reactor, 2.0, lambda: None)
        self.assertGreater(time.monotonic() - stopped_at, 2.0)

        await threads.deferToThread(self.pg.start)
        await wait_for(lambda: len(relay.accepted) >= count, timeout=60)

        def all_sent():
            d = service.db.runQuery("SELECT count(*) FROM outbox WHERE state = 'sent'")
            d.addCallbacks(lambda rows: rows[0][0] == count, lambda _: False)
            return d

        await wait_for(all_sent, timeout=30)
        copies = collections.Counter(m.recipients[0] for m in relay.accepted)
        self.assertEqual(len(copies), count)
        self.assertEqual(max(copies.values()), 1, "a message was sent twice")
        status, _, body = await http_get(f"http://127.0.0.1:{http_port}/healthz")
        self.assertEqual(status, 200)


REAL = ("ada@example.org", "bob@example.net")


def _post(port: int, mail_from: str, to: str, i: int) -> tuple[int, bytes]:
    import smtplib

    raw = (f"From: {mail_from}\r\nTo: {to}\r\nSubject: post {i}\r\n"
           f"Message-ID: <outage-{i}@example.org>\r\n\r\nbody {i}\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mail.example.org")
        client.mail(mail_from)
        code, text = client.rcpt(to)
        if code != 250:
            return code, text
        return client.data(raw)


class InboundAfterRestartTests(unittest.TestCase):
    """
    PostgreSQL restarts while posts arrive: one second after it is back,
    every post gets 250 (none the 451 of a pooled connection that died
    during the outage and had not reconnected yet).
    """

    timeout = 180

    def setUp(self):
        root = Path(tempfile.mkdtemp(prefix="emaild-outage-in-"))
        self.pg = EmbeddedPostgres(root / "pgdata", database="emaild")
        self.pg.start()
        self.addCleanup(self.pg.destroy)
        self.tmp = root

    def test_no_451_once_postgres_is_back(self):
        return _stopped_in_cleanup(self, self._scenario())

    async def _scenario(self):
        import socket

        from twisted.internet.defer import DeferredList

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            smtp_port = s.getsockname()[1]
        # the members' domain vouches for mail from this host (SPF), so posts
        # are relayed, not held; and one client may send all 32 posts at once
        domain = REAL[0].split("@")[1]
        dns_server = ZoneServer(domain, {domain: [txt("v=spf1 ip4:127.0.0.1 -all")]})
        dns_port = dns_server.start()
        self.addCleanup(dns_server.stop)
        config = make_config(self.tmp, self.pg.dsn(),
                             smtp={"relay_domain": "relay.course.test",
                                   "endpoint": f"tcp:{smtp_port}:interface=127.0.0.1",
                                   "max_sessions_per_client": 40},
                             groups={"max_posts_per_hour": 1000},
                             dns={"servers": [f"127.0.0.1:{dns_port}"]},
                             database={"pool_size": 4},
                             relay={"poll_interval": "0.5s"},
                             http={"endpoint": "tcp:0:interface=127.0.0.1"})
        service = Emaild(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        # the clients run in threads of their own, not in the reactor's pool
        # (the daemon's): every one has ended before the daemon stops
        clients = ThreadPool(maxthreads=10, name="smtp-clients")
        clients.start()
        self.addCleanup(threads.deferToThread, clients.stop)
        await service.ready
        web = service.web
        course = await web.people.ensure_course("", "phys", "Physics 101")
        group_id = await web.people.ensure_group(course, "Team")
        for address in REAL:
            person = await web.people.add(address, address.split("@")[0])
            await web.people.join_group(group_id, person.id)
        members = await web.groups.members(group_id)
        ada = next(m for m in members if m.email == REAL[0])
        reply = service.relay.addresses.address(ada.token)

        async def send(numbers) -> list[tuple[int | None, object]]:
            # every post's outcome, also a client's exception (as code None):
            # all of them, once every client has finished
            results = await DeferredList(
                [threads.deferToThreadPool(reactor, clients, _post, smtp_port, REAL[0], reply, i)
                 for i in numbers], consumeErrors=True)
            return [r if ok else (None, f"{r.type.__name__}: {r.value}") for ok, r in results]

        # load before: every pooled connection has been used
        before = await send(range(8))
        self.assertEqual([c for c, _ in before], [250] * 8, before)

        await threads.deferToThread(self.pg.stop, "fast")
        # long enough for the reconnection attempts to back off to their 5 s
        await task.deferLater(reactor, 8.0, lambda: None)
        await threads.deferToThread(self.pg.start)
        await task.deferLater(reactor, 1.0, lambda: None)

        n = 24
        after = await send(range(100, 100 + n))
        codes = collections.Counter(code for code, _ in after)
        self.assertEqual(codes, {250: n}, [r for r in after if r[0] != 250][:3])
        stored = await service.db.runQuery(
            "SELECT count(*) FROM inbound_messages WHERE raw LIKE %s", (b"%Subject: post 1%",))
        self.assertEqual(stored[0][0], n + 1)  # 100-123 and post 1


def _stopped_in_cleanup(case: unittest.TestCase, coroutine) -> defer.Deferred:
    """
    Run C{coroutine} as C{case}'s test, so that it cannot outlive the test.

    When a trial test times out, trial fails the Deferred the test returned
    and runs the clean-ups, but the coroutine behind it runs on: it would
    wake up during later tests, use parts already stopped and log errors
    there.  Trial gets a Deferred of its own; the first clean-up (added
    last) cancels the coroutine wherever it waits.
    """
    scenario = defer.ensureDeferred(coroutine)
    case.addCleanup(scenario.cancel)
    outcome: defer.Deferred = defer.Deferred()

    def forward(result):
        if outcome.called:
            return None  # trial gave up on it (timeout): nothing to report to
        if isinstance(result, Failure):
            outcome.errback(result)
        else:
            outcome.callback(result)
        return None

    scenario.addBoth(forward)
    return outcome
