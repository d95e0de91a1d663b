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
from tests.inbound.test_inbound_relay import REAL, RelayTestCase, mail

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



def _raw_session(port: int, lines: list[bytes]) -> list[bytes]:
    """Send each line, read its one reply (its last line)."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        replies = []
        for line in lines:
            sock.sendall(line + b"\r\n")
            while True:
                reply = reader.readline().rstrip(b"\r\n")
                if reply[3:4] != b"-":
                    break
            replies.append(reply)
        return replies


class EnvelopeStorageTests(HandlerTests):
    """What the server answers 250 the real store can keep (no 451 after)."""

    @defer.inlineCallbacks
    def test_bad_bytes_refused_at_their_command_then_mail_is_stored(self):
        self.handler.max_posts_per_hour = 0  # one post per bad byte
        rcpt = self.reply["ada"].encode()
        body = mail("Ada <ada@example.org>", self.reply["ada"], "s", "b")
        bad = [bytes([b]) for b in (*range(0x00, 0x0A), *range(0x0B, 0x20), 0x7F)]
        bad += [b"\xff", b"\xc3(", "\u00e9".encode()]
        for byte in bad:
            replies = yield threads.deferToThread(_raw_session, self.port, [
                b"EHLO mx" + byte + b".example.net",
                b"EHLO mx.example.net",
                b"MAIL FROM:<ada" + byte + b"@example.org>",
                b"MAIL FROM:<ada@example.org> BODY=8BIT" + byte,
                b"MAIL FROM:<ada@example.org>",
                b"RCPT TO:<" + rcpt + byte + b">",
                b"RCPT TO:<" + rcpt + b">",
                b"DATA",
                body + b"\r\n.",
            ])
            codes = [r[:1] + (b"xx" if r[:1] == b"5" else r[1:3]) for r in replies]
            self.assertEqual(codes, [b"5xx", b"250", b"5xx", b"5xx", b"250", b"5xx", b"250",
                                     b"354", b"250"], (byte, replies))
        stored = self.query("SELECT helo, mail_from FROM inbound_messages")
        self.assertEqual(stored, [("mx.example.net", REAL[0])] * len(bad))
        self.assertEqual(self.flushLoggedErrors(), [])


class RecipientLimitTests(HandlerTests):
    @defer.inlineCallbacks
    def test_200_repeated_rcpts_are_relayed_once(self):
        self.processor()
        local, domain = self.reply["ada"].split("@")
        spellings = [self.reply["ada"], f"{local.upper()}@{domain}", f"{local}@{domain.upper()}"]
        rcpts = [spellings[i % 3] for i in range(200)]
        replies, (code, text) = yield self.send(
            REAL[0], rcpts, mail("Ada <ada@example.org>", self.reply["ada"], "once", "hi"))
        self.assertEqual({c for c, _ in replies}, {250})
        self.assertEqual(code, 250, text)
        message_id = int(text.rsplit(b" ", 1)[1])
        states = yield defer.ensureDeferred(self.processed(message_id))
        self.assertEqual(len(states), 1)  # one recipient row
        copies = self.copies(message_id)
        self.assertEqual([c[0] for c in copies], ["bob@example.net", "carol@example.com"])

    @defer.inlineCallbacks
    def test_posting_rate_is_450_at_rcpt_and_recorded(self):
        self.handler.max_posts_per_hour = 2
        body = mail("Ada <ada@example.org>", self.reply["ada"], "s", "b")
        for _ in range(2):
            (rcpt,), (code, _) = yield self.send(REAL[0], [self.reply["ada"]], body)
            self.assertEqual((rcpt[0], code), (250, 250))
        for _ in range(2):
            (rcpt,), data = yield self.send(REAL[0], [self.reply["ada"]], body)
            self.assertEqual(rcpt, (450, b"4.7.1 too many posts from this member in the last "
                                         b"hour (at most 2); try again later"))
            self.assertIsNone(data)
        # another member is not limited by Ada's posts
        (rcpt,), (code, _) = yield self.send(
            REAL[1], [self.reply["bob"]], mail("bob@example.net", self.reply["bob"], "s", "b"))
        self.assertEqual((rcpt[0], code), (250, 250))
        self.assertEqual(self.query("SELECT count(*) FROM inbound_messages"), [(3,)])
        [refusal] = yield defer.ensureDeferred(self.inbound.recent_refusals())
        self.assertEqual((refusal.reason, refusal.address, refusal.mail_from, refusal.attempts),
                         ("rate", self.reply["ada"], REAL[0], 2))
        self.assertIn("450 4.7.1", refusal.reply)
        # an hour later she may post again
        self.query("UPDATE inbound_messages SET received_at = received_at - interval '61 min'")
        (rcpt,), (code, _) = yield self.send(REAL[0], [self.reply["ada"]], body)
        self.assertEqual((rcpt[0], code), (250, 250))
