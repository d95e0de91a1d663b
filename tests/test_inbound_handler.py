"""
The real recipient and sender checks behind the real SMTP server, against
the real database: no open relay, dead and forged addresses refused with
replies that say why, the sender check before 250, and a storage failure
answered 451 (retry), never 5xx.
"""

from __future__ import annotations

import smtplib

from twisted.internet import defer, reactor, threads

from emaild.inbound.server import InboundFactory
from tests.test_inbound_relay import REAL, RelayTestCase, mail

DOMAIN_NAME = "mx.relay.course.test"


def _transaction(port: int, mail_from: str, rcpts: list[str], data: bytes | None):
    """
    One SMTP transaction; the reply to each RCPT, then to DATA (or None).
    """
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("mx.example.net")
        client.mail(mail_from)
        replies = [client.rcpt(r) for r in rcpts]
        if data is None or not any(code == 250 for code, _ in replies):
            return replies, None
        try:
            return replies, client.data(data)
        except smtplib.SMTPDataError as e:
            return replies, (e.smtp_code, e.smtp_error)


class HandlerTests(RelayTestCase):
    def setUp(self):
        d = super().setUp()
        d.addCallback(lambda _: self._listen())
        return d

    def _listen(self):
        factory = InboundFactory(self.handler, hostname=DOMAIN_NAME, reactor=reactor)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    def send(self, mail_from, rcpts, data=None):
        return threads.deferToThread(_transaction, self.port, mail_from, rcpts, data)

    @defer.inlineCallbacks
    def test_no_open_relay_and_no_guessing(self):
        ada = self.reply["ada"]
        local, domain = ada.split("@")
        replies, _ = yield self.send(REAL[0], [
            "someone@example.com", f"{local}@example.com", f"nobody@{domain}",
            f"{local[:-1]}@{domain}", f"{local}x@{domain}", f"bounces+0000@{domain}",
            f"unsubscribe+AbCdEf123456@{domain}", "postmaster@[127.0.0.1]"])
        codes = [(code, text.split(b" ", 1)[0]) for code, text in replies]
        self.assertEqual(codes, [(550, b"5.7.1"), (550, b"5.7.1")] + [(550, b"5.1.1")] * 5
                         + [(550, b"5.7.1")])
        self.assertIn(b"relaying denied", replies[0][1])
        self.assertEqual(self.query("SELECT count(*) FROM inbound_messages"), [(0,)])

    @defer.inlineCallbacks
    def test_a_left_members_address_says_it_no_longer_works(self):
        yield defer.ensureDeferred(self.groups.leave(self.group_id, self.ids["ada"]))
        ((code, text),), _ = yield self.send(REAL[0], [self.reply["ada"]])
        self.assertEqual(code, 550)
        self.assertIn(b"5.1.1", text)
        self.assertIn(b"no longer works", text)

    @defer.inlineCallbacks
    def test_sender_checks_before_250(self):
        body = mail("Ada <ada@example.org>", self.reply["ada"], "hello", "hi")
        # the envelope proves it
        (rcpt,), (code, text) = yield self.send(REAL[0], [self.reply["ada"]], body)
        self.assertEqual((rcpt[0], code), (250, 250), text)
        self.assertRegex(text, rb"queued as \d+")
        # another envelope (a forwarding service), but From is the member
        (_,), (code, text) = yield self.send("srs0=x@forwarder.example", [self.reply["ada"]], body)
        self.assertEqual(code, 250, text)
        # neither: refused permanently, saying why, and nothing stored
        stored = self.query("SELECT count(*) FROM inbound_messages")[0][0]
        for mail_from, sender in (("eve@example.org", "Eve <eve@example.org>"),
                                  (REAL[1], "Bob <bob@example.net>")):  # Bob at Ada's address
            (_,), (code, text) = yield self.send(
                mail_from, [self.reply["ada"]], mail(sender, self.reply["ada"], "x", "y"))
            self.assertEqual(code, 550)
            self.assertIn(b"5.7.1", text)
            self.assertIn(b"your own group address", text)
            self.assertNotIn(REAL[0].encode(), text)  # never reveals the member's address
        self.assertEqual(self.query("SELECT count(*) FROM inbound_messages")[0][0], stored)

    @defer.inlineCallbacks
    def test_a_storage_failure_is_451_and_the_retry_succeeds(self):
        # a real failure inside PostgreSQL while storing
        self.query("ALTER TABLE inbound_messages ADD CONSTRAINT broken CHECK (size < 0)")
        body = mail("ada@example.org", self.reply["ada"], "s", "b")
        (rcpt,), (code, text) = yield self.send(REAL[0], [self.reply["ada"]], body)
        self.assertEqual((rcpt[0], code), (250, 451))
        self.assertIn(b"4.3.0", text)
        self.assertEqual(self.query("SELECT count(*) FROM inbound_messages"), [(0,)])
        self.flushLoggedErrors()
        self.query("ALTER TABLE inbound_messages DROP CONSTRAINT broken")
        (_,), (code, _) = yield self.send(REAL[0], [self.reply["ada"]], body)
        self.assertEqual(code, 250)

