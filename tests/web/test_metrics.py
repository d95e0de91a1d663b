"""
/metrics: the scrape parses (prometheus_client's own parser), its numbers
move when mail is sent and received, and who may scrape it.
"""

from __future__ import annotations

import smtplib

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, threads

from emaild.inbound.server import InboundFactory, Refused
from emaild.metrics import Metrics
from emaild.outbound.sender import Sender
from emaild.outbound.transport import DeliveryResult, Outcome
from tests.fakes import SENT, ScriptedTransport
from tests.inbound.test_inbound_relay import RelayTestCase, mail
from tests.inbound.test_inbound_server import MemoryHandler
from tests.support import wait_for
from tests.web.test_api import TOKEN
from tests.web.test_web_links import async_test
from tests.webtest import WebTestCase

THROTTLE = DeliveryResult(Outcome.THROTTLED, 454, "Throttling failure: Maximum sending rate")
NO_USER = DeliveryResult(Outcome.FAILED, 550, "5.1.1 no such user")


def value(registry, name: str, **labels) -> float:
    return registry.get_sample_value(name, labels) or 0.0


class MetricsWebTests(WebTestCase):
    async def scrape(self, headers=None, expect=200) -> dict:
        response, text = await self.http.get("/metrics", headers=headers or {})
        self.assertEqual(response.code, expect, text)
        if expect != 200:
            return {}
        (ctype,) = response.headers.getRawHeaders("content-type")
        self.assertTrue(ctype.startswith("text/plain; version="), ctype)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    async def start(self):
        await self.start_web(api={"tokens": [TOKEN]}, relay={"rate": 1000, "burst": 1000})
        self.http = self.client()
        self.metrics = self.web.metrics = Metrics()

    def insert(self, state, qos, n=1):
        for _ in range(n):
            self.query(
                "INSERT INTO outbox (template, qos, priority, recipient, envelope_from,"
                " message_id, body, state) VALUES ('plain', %s, 1, 'a@example.org',"
                " 'b' || random()::text, '<m>', 'x', %s)", (qos, state))

    @async_test
    async def test_queue_depth_by_state_and_class_from_the_database(self):
        await self.start()
        self.insert("queued", "default", 2)
        self.insert("failed", "bulk")
        samples = await self.scrape()
        depth = {k[1]: v for k, v in samples.items() if k[0] == "emaild_outbox_messages"}
        self.assertEqual(depth, {(("qos", "default"), ("state", "queued")): 2.0,
                                 (("qos", "bulk"), ("state", "failed")): 1.0})
        self.query("UPDATE outbox SET state = 'sent'")
        samples = await self.scrape()
        depth = {k[1]: v for k, v in samples.items() if k[0] == "emaild_outbox_messages"}
        self.assertEqual(depth, {(("qos", "default"), ("state", "sent")): 2.0,
                                 (("qos", "bulk"), ("state", "sent")): 1.0})
        # the app's own registry, not the process-wide one
        self.assertIsNone(REGISTRY.get_sample_value("emaild_outbound_sent_total",
                                                    {"qos": "default"}))

    @async_test
    async def test_who_may_scrape(self):
        await self.start()
        await self.scrape()  # loopback
        await self.scrape({"X-Forwarded-For": ["203.0.113.9"]}, expect=403)
        await self.scrape({"Forwarded": ["for=203.0.113.9"]}, expect=403)
        await self.scrape({"X-Forwarded-For": ["203.0.113.9"],
                           "Authorization": [f"Bearer {TOKEN}"]})
        await self.scrape({"Authorization": ["Bearer wrong"]}, expect=401)

    @async_test
    async def test_sender_outcomes_move_the_counters(self):
        await self.start()
        self.query("INSERT INTO suppressions (address, reason) VALUES ('gone@example.org', 'x')")
        before = await self.scrape()
        self.assertEqual(before.get(("emaild_outbound_sent_total", (("qos", "default"),))), None)

        def script(message, attempt):
            if message.recipient.startswith("bad@"):
                return NO_USER
            if message.recipient.startswith("slow@") and attempt == 1:
                return THROTTLE
            return SENT

        transport = ScriptedTransport(reactor, script)
        sender = Sender(reactor, self.outbox.store, transport, self.cfg, owner="t",
                        metrics=self.metrics)
        sender.startService()
        await sender.starting
        self.addCleanup(sender.stopService)
        await self.outbox.enqueue("plain", [(a, {"subject": "s", "body": "b"}) for a in (
            "ok@example.org", "bad@example.org", "gone@example.org", "slow@example.org")])
        await wait_for(lambda: self.query(
            "SELECT count(*) FROM outbox WHERE state IN ('queued', 'sending')") == [(0,)],
            timeout=20)
        await wait_for(lambda: not sender._results and sender._flushing is None)
        after = await self.scrape()
        default = (("qos", "default"),)
        self.assertEqual(after[("emaild_outbound_sent_total", default)], 2.0)
        self.assertEqual(after[("emaild_outbound_failed_total", default)], 1.0)
        self.assertEqual(after[("emaild_outbound_retried_total", default)], 1.0)
        self.assertEqual(after[("emaild_outbound_suppressed_total", ())], 1.0)
        self.assertEqual(after[("emaild_outbound_throttled_total", ())], 1.0)
        self.assertEqual(after[("emaild_outbound_send_latency_seconds_count", ())], 2.0)
        self.assertGreaterEqual(after[("emaild_outbound_send_latency_seconds_sum", ())], 0.0)
        self.assertEqual(after[("emaild_outbound_send_latency_seconds_bucket",
                                (("le", "+Inf"),))], 2.0)


class InboundMetricsTests(RelayTestCase):
    async def test_smtp_sessions_and_messages(self):
        metrics = Metrics()
        handler = MemoryHandler()
        factory = InboundFactory(handler, hostname="mx.test", metrics=metrics,
                                 max_message_size=2000)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        def send(body: str):
            with smtplib.SMTP("127.0.0.1", number, timeout=10) as client:
                try:
                    client.sendmail("a@example.org", ["b@mx.test"], f"Subject: x\r\n\r\n{body}")
                    return 250
                except smtplib.SMTPResponseException as e:
                    return e.smtp_code

        self.assertEqual(await threads.deferToThread(send, "hello"), 250)
        # smtplib sends SIZE=: refused at MAIL FROM, before there is a message
        self.assertEqual(await threads.deferToThread(send, "x" * 3000), 552)
        handler.deliver_error = Refused(554, "5.7.1", "not wanted")
        self.assertEqual(await threads.deferToThread(send, "hello"), 554)
        await wait_for(lambda: not factory.sessions)
        r = metrics.registry
        self.assertEqual(value(r, "emaild_inbound_smtp_sessions_total", result="accepted"), 3)
        self.assertEqual(value(r, "emaild_inbound_smtp_messages_total", result="accepted"), 1)
        self.assertEqual(value(r, "emaild_inbound_smtp_messages_total", result="refused"), 1)

    async def test_too_busy_sessions_are_counted(self):
        metrics = Metrics()
        factory = InboundFactory(MemoryHandler(), hostname="mx.test", metrics=metrics,
                                 max_sessions=1)
        factory.sessions.add(object())  # the one slot is taken
        factory.buildProtocol(None)
        self.assertEqual(value(metrics.registry, "emaild_inbound_smtp_sessions_total",
                               result="too_busy"), 1)

    async def test_relay_fan_out_copies(self):
        from emaild.inbound.relay import RelayProcessor

        metrics = Metrics()
        processor = RelayProcessor(reactor, self.cfg, self.inbound, self.addresses,
                                   self.outbox.links, self.outbox, metrics=metrics)
        processor.startService()
        self.addCleanup(processor.stopService)
        first = await self.receive("ada", mail("Ada Lovelace <ada@example.org>",
                                               self.reply["ada"], "Hi", "Hello all\n"))
        (state,) = await self.processed(first)
        self.assertEqual(state[0], "done", state)
        await wait_for(lambda: value(metrics.registry, "emaild_relay_copies_total") == 2)
