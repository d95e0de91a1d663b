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

    @defer.inlineCallbacks
    def test_no_451_once_postgres_is_back(self):
        yield defer.ensureDeferred(self._scenario())

    async def _scenario(self):
        import socket

        from twisted.internet.defer import gatherResults

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

        def send(i):
            return threads.deferToThread(_post, smtp_port, REAL[0], reply, i)

        # load before: every pooled connection has been used
        before = await gatherResults([send(i) for i in range(8)])
        self.assertEqual([c for c, _ in before], [250] * 8)

        await threads.deferToThread(self.pg.stop, "fast")
        # long enough for the reconnection attempts to back off to their 5 s
        await task.deferLater(reactor, 8.0, lambda: None)
        await threads.deferToThread(self.pg.start)
        await task.deferLater(reactor, 1.0, lambda: None)

        n = 24
        after = await gatherResults([send(100 + i) for i in range(n)])
        codes = collections.Counter(code for code, _ in after)
        self.assertEqual(codes, {250: n}, [r for r in after if r[0] != 250][:3])
        stored = await service.db.runQuery(
            "SELECT count(*) FROM inbound_messages WHERE raw LIKE %s", (b"%Subject: post 1%",))
        self.assertEqual(stored[0][0], n + 1)  # 100-123 and post 1
