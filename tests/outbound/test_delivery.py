"""
The whole outbound path in one process: the Emaild service (real database,
real sender, real SMTP transport) delivering to a real loopback relay.
"""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from twisted.internet import defer, reactor

from emaild.service import Emaild
from tests.relay import Relay
from tests.support import DatabaseTestCase, http_get, wait_for
from tests.tlsfiles import make_tls_files


class DeliveryTestCase(DatabaseTestCase):
    relay_options: dict = {}

    async def start(self, relay: Relay, templates: Path | None = None, **relay_config):
        port = relay.start()
        self.addCleanup(relay.stop)
        relay_config = {"transport": "smtp", "host": "127.0.0.1", "port": port, "tls": "none",
                        "rate": 1000, "burst": 100, "poll_interval": "1s", **relay_config}
        sections = {"relay": relay_config, "http": {"endpoint": "tcp:0:interface=127.0.0.1"},
                    "smtp": {"relay_domain": "mail.course.test"},
                    "qos__default": {"backoff": ["1h"]}}
        if templates is not None:
            sections["templates"] = {"dir": str(templates)}
        self.service = Emaild(self.config(**sections), reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        await self.service.ready

    async def enqueue(self, template, recipients, **kwargs):
        return await self.service.outbox.enqueue(template, recipients, **kwargs)

    def terminal(self, n):
        return lambda: self.query(
            "SELECT count(*) FROM outbox WHERE state IN ('sent', 'failed', 'suppressed')"
            " OR (state = 'queued' AND attempts > 0) OR reason LIKE 'throttled%%'")[0][0] >= n


class DeliveryTests(DeliveryTestCase):
    @defer.inlineCallbacks
    def test_starttls_auth_relay_gets_every_message_with_its_envelope(self):
        tls = make_tls_files()
        relay = Relay(tls_pem=tls.localhost_pem, require_tls=True, auth=(b"course", b"s3cret"))
        yield defer.ensureDeferred(self.start(
            relay, host="localhost", tls="starttls", ca_file=tls.ca_path,
            username="course", password="s3cret"))
        report = yield defer.ensureDeferred(self.enqueue(
            "welcome", [(f"learner{i}@example.org", {"name": f"Learner {i}"}) for i in range(5)]))
        yield wait_for(lambda: len(relay.accepted) == 5)
        yield wait_for(lambda: self.query("SELECT count(*) FROM outbox WHERE state = 'sent'")[0][0] == 5)
        rows = dict(self.query("SELECT recipient, envelope_from FROM outbox"))
        for received in relay.accepted:
            self.assertTrue(received.tls)
            self.assertEqual(received.user, b"course")
            (rcpt,) = received.recipients
            self.assertEqual(received.mail_from, rows[rcpt])
            self.assertTrue(received.mail_from.startswith("bounces+"))
            self.assertTrue(received.mail_from.endswith("@mail.course.test"))
            parsed = email.message_from_bytes(received.data, policy=email.policy.default)
            self.assertEqual(parsed.get_content_type(), "multipart/alternative")
            self.assertEqual(parsed["To"].addresses[0].addr_spec, rcpt)
            self.assertIn("@mail.course.test>", parsed["Message-ID"])
            self.assertIsNotNone(parsed["Date"].datetime)
        self.assertEqual(len(report.ids), 5)
        self.assertLessEqual(relay.connections, 4)

    @defer.inlineCallbacks
    def test_dot_lines_and_line_endings_arrive_byte_identical(self):
        # every line starts with a dot, across several 16 KiB and 64 KiB
        # boundaries; the same template once with LF and once with CRLF
        lines = ["." * (i % 7 + 1) + f" line {i}" for i in range(12000)] + ["."]
        templates = Path(self.mktemp()) / "ops"
        (templates / "email").mkdir(parents=True)
        for name, newline in (("dots_lf", "\n"), ("dots_crlf", "\r\n")):
            (templates / "email" / f"{name}.subject.txt").write_bytes(b"Dots\n")
            (templates / "email" / f"{name}.txt").write_bytes(
                (".first line\n" + "\n".join(lines) + "\n").replace("\n", newline).encode())
        relay = Relay()
        yield defer.ensureDeferred(self.start(relay, templates=templates))
        yield defer.ensureDeferred(self.enqueue("dots_lf", [("a@example.org", {})]))
        yield defer.ensureDeferred(self.enqueue("dots_crlf", [("b@example.org", {})]))
        yield wait_for(lambda: len(relay.accepted) == 2)
        bodies = {}
        for received in relay.accepted:
            head, _, body = received.data.partition(b"\r\n\r\n")
            bodies[received.recipients[0]] = body
            stored = self.query("SELECT body FROM outbox WHERE recipient = %s",
                                (received.recipients[0],))[0][0]
            self.assertEqual(received.data, bytes(stored).replace(b"\n", b"\r\n"))
        self.assertEqual(bodies["a@example.org"], bodies["b@example.org"])
        expected = (".first line\r\n" + "\r\n".join(lines) + "\r\n").encode()
        self.assertEqual(bodies["a@example.org"], expected)

    @defer.inlineCallbacks
    def test_user_data_cannot_inject_headers_or_recipients(self):
        relay = Relay()
        yield defer.ensureDeferred(self.start(relay))
        report = yield defer.ensureDeferred(self.enqueue("plain", [
            ("eve@example.org", {"name": "Eve\r\nBcc: victim@example.org",
                                 "subject": "Hello\nX-Injected: yes\r\n\r\nbody?",
                                 "body": "text"}),
            ("a@example.org>\r\nRCPT TO:<victim@example.org", {"subject": "s", "body": "b"}),
            ("victim@example.org\nBcc: other@example.org", {"subject": "s", "body": "b"}),
        ]))
        self.assertEqual(len(report.ids), 1)
        self.assertEqual([r.index for r in report.rejected], [1, 2])
        yield wait_for(lambda: len(relay.accepted) == 1)
        (received,) = relay.accepted
        self.assertEqual(received.recipients, ["eve@example.org"])
        parsed = email.message_from_bytes(received.data, policy=email.policy.default)
        self.assertNotIn("Bcc", parsed)
        self.assertNotIn("X-Injected", parsed)
        self.assertEqual(parsed["Subject"], "Hello X-Injected: yes body?")
        self.assertEqual(parsed["To"].addresses[0].display_name, "Eve Bcc: victim@example.org")
        self.assertEqual(parsed["To"].addresses[0].addr_spec, "eve@example.org")
        self.assertNotIn(b"victim@example.org", b" ".join(s for c in relay.all_commands() for s in [c]))

    @defer.inlineCallbacks
    def test_relay_replies_decide_each_recipients_fate(self):
        def rcpt(address):
            return {"bob@example.org": (550, "5.1.1 no such user"),
                    "carol@example.org": (450, "4.2.1 mailbox busy")}.get(address)

        def data(message):
            if message.recipients == ["dave@example.org"] and not getattr(data, "done", False):
                data.done = True
                return (454, "Throttling failure: Maximum sending rate exceeded.")
            return (250, "2.0.0 Ok")

        relay = Relay(rcpt_policy=rcpt, data_policy=data)
        yield defer.ensureDeferred(self.start(relay))
        yield defer.ensureDeferred(self.enqueue("plain", [
            (f"{name}@example.org", {"subject": "s", "body": "b"})
            for name in ("alice", "bob", "carol", "dave")]))
        yield wait_for(lambda: len(self.query(
            "SELECT 1 FROM outbox_attempts WHERE outcome = 'sent'")) == 2, timeout=15)
        rows = {r[0]: r[1:] for r in self.query("SELECT recipient, state, attempts, reason FROM outbox")}
        self.assertEqual(rows["alice@example.org"][:2], ("sent", 1))
        self.assertEqual(rows["bob@example.org"][:2], ("failed", 1))
        self.assertIn("550 5.1.1 no such user", rows["bob@example.org"][2])
        self.assertEqual(rows["carol@example.org"][:2], ("queued", 1))  # retried in an hour
        self.assertIn("450", rows["carol@example.org"][2])
        # throttled, requeued without burning an attempt, then sent
        self.assertEqual(rows["dave@example.org"][:2], ("sent", 1))
        dave = self.query("SELECT a.outcome, a.code FROM outbox_attempts a JOIN outbox o"
                          " ON o.id = a.outbox_id WHERE o.recipient = 'dave@example.org' ORDER BY a.id")
        self.assertEqual(dave, [("throttled", 454), ("sent", 250)])

    @defer.inlineCallbacks
    def test_connection_dropped_mid_data_is_retried_not_lost(self):
        relay = Relay(drop_mid_data=True)
        yield defer.ensureDeferred(self.start(relay))
        yield defer.ensureDeferred(self.enqueue("plain", [("a@example.org", {"subject": "s", "body": "b"})]))
        yield wait_for(lambda: self.query("SELECT attempts FROM outbox")[0][0] == 1)
        (state, reason), = self.query("SELECT state, reason FROM outbox")
        self.assertEqual(state, "queued")
        self.assertIn("connection lost during DATA", reason)

    @defer.inlineCallbacks
    def test_healthz_reports_parts(self):
        relay = Relay()
        yield defer.ensureDeferred(self.start(relay))
        port = self.service.getServiceNamed("http")._waitingForPort.result.getHost().port
        status, headers, body = yield http_get(f"http://127.0.0.1:{port}/healthz")
        self.assertEqual(status, 200)
        self.assertEqual(body["parts"]["database"], {"state": "ok"})
        self.assertEqual(body["parts"]["sender"]["transport"], "smtp")
        self.assertEqual(headers["Content-Type"], "application/json; charset=utf-8")
