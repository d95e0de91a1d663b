"""
In-flow control (emaild.inbound.inflow): while the relay processor is
behind, the SMTP server delays new transactions and, above a hard bound,
answers 451 4.3.2; the processor tells it the backlog after each batch.
"""

from __future__ import annotations

import smtplib

from twisted.internet import reactor, threads
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from emaild.config import ConfigError, load_config
from emaild.homeserver import HomeServer
from emaild.inbound.inflow import InFlow
from emaild.inbound.interfaces import Refused
from emaild.inbound.server import InboundFactory
from tests.inbound.test_inbound_relay import RelayTestCase, mail
from tests.inbound.test_inbound_server import MemoryHandler
from tests.inbound.test_inbound_server_unit import Session

MAIL = b"EHLO client.test\r\nMAIL FROM:<ada@example.org>\r\n"


class InFlowTests(TestCase):
    def inflow(self, **kw) -> InFlow:
        self.clock = Clock()
        return InFlow(self.clock, **{"backlog": 100, "max_delay": 2.0, "refuse": 300, **kw})

    def test_below_the_bound_new_mail_goes_on_at_once(self):
        inflow = self.inflow()
        inflow.update(100)
        self.assertIsNone(inflow.admit())
        self.assertEqual(inflow.backlog, 101)  # each admitted transaction counts

    def test_above_it_the_delay_grows_with_the_backlog(self):
        inflow = self.inflow()
        for waiting, delay in ((150, 0.5), (200, 1.0), (299, 1.99), (300, 2.0)):
            inflow.update(waiting)
            self.assertAlmostEqual(inflow.delay(), delay)
        inflow.update(200)
        fired = []
        inflow.admit().addCallback(fired.append)
        self.clock.advance(0.99)
        self.assertEqual(fired, [])
        self.clock.advance(0.02)
        self.assertEqual(fired, [None])
        self.assertEqual(inflow.delayed, 1)

    def test_above_the_hard_bound_new_mail_is_refused_with_451(self):
        inflow = self.inflow()
        inflow.update(301)
        failure = self.failureResultOf(inflow.admit(), Refused)
        self.assertEqual((failure.value.code, failure.value.status), (451, "4.3.2"))
        self.assertEqual((inflow.refused, inflow.admitted), (1, 0))
        inflow.update(10)  # the processor caught up
        self.assertIsNone(inflow.admit())

    def test_zero_turns_each_bound_off(self):
        inflow = self.inflow(backlog=0, refuse=0)
        inflow.update(10**9)
        self.assertIsNone(inflow.admit())
        inflow = self.inflow(refuse=0)
        inflow.update(10**9)
        self.assertEqual(inflow.delay(), 2.0)

    def test_the_backlog_and_the_delayed_and_refused_counts_are_scraped(self):
        home = HomeServer(load_config(None, environ={}, overrides={
            "smtp": {"in_flow_backlog": 100, "in_flow_refuse": 300}}), Clock())
        inflow = home.get_inflow()
        registry = home.get_metrics().registry
        inflow.update(200)
        inflow.admit()
        inflow.update(400)
        for _ in range(2):
            self.failureResultOf(inflow.admit(), Refused)
        self.assertEqual(registry.get_sample_value("emaild_inbound_relay_backlog"), 400)
        self.assertEqual(registry.get_sample_value("emaild_inbound_in_flow_delayed_total"), 1)
        self.assertEqual(registry.get_sample_value("emaild_inbound_in_flow_refused_total"), 2)
        self.assertIn(b"emaild_inbound_relay_backlog 400.0", home.get_metrics().render({}))

    def test_the_bounds_are_checked_in_the_configuration(self):
        config = load_config(None, environ={}, overrides={
            "smtp": {"in_flow_backlog": 500, "in_flow_refuse": 500}})
        with self.assertRaises(ConfigError) as raised:
            HomeServer(config, Clock()).get_inflow()
        self.assertIn("smtp.in_flow_refuse", str(raised.exception))
        with self.assertRaises(ConfigError) as raised:
            load_config(None, environ={}, overrides={"smtp": {"in_flow_delay": "soon"}})
        self.assertIn("smtp.in_flow_delay", str(raised.exception))
        defaults = HomeServer(load_config(None, environ={}), Clock()).get_inflow()
        self.assertEqual((defaults.delay_above, defaults.max_delay, defaults.refuse_above),
                         (2000, 1.0, 20000))


class ServerTests(TestCase):
    def session(self, waiting: int) -> Session:
        self.clock = Clock()
        factory = InboundFactory(MemoryHandler(), hostname="mx.test", reactor=self.clock)
        factory.inflow = InFlow(self.clock, backlog=100, max_delay=2.0, refuse=300)
        factory.inflow.update(waiting)
        return Session(factory)

    def test_mail_is_answered_at_once_without_a_backlog(self):
        replies = self.session(0).send(MAIL)
        self.assertEqual(replies[-1], b"250 2.1.0 Ok")

    def test_mail_waits_while_the_processor_is_behind(self):
        s = self.session(200)
        replies = s.send(MAIL + b"RCPT TO:<group@mx.test>\r\n")  # pipelined: waits too
        self.assertTrue(replies[-1].startswith(b"250 "))  # EHLO only
        self.clock.advance(0.9)
        self.assertEqual(s.take(), [])
        self.clock.advance(0.2)
        self.assertEqual(s.take()[0], b"250 2.1.0 Ok")

    def test_mail_is_refused_with_451_above_the_hard_bound(self):
        s = self.session(301)
        self.assertEqual(s.send(MAIL)[-1],
                         b"451 4.3.2 Too much mail waiting to be relayed, try again later")
        self.assertEqual(s.send(b"RCPT TO:<group@mx.test>\r\n"),
                         [b"503 5.5.1 Error: need MAIL command"])
        s.factory.inflow.update(0)
        self.assertEqual(s.send(b"MAIL FROM:<ada@example.org>\r\n"), [b"250 2.1.0 Ok"])


class DaemonTests(TestCase):
    def test_the_daemon_wires_the_server_to_the_processor(self):
        from emaild.service import Emaild

        config = load_config(None, environ={}, overrides={
            "smtp": {"endpoint": "tcp:0:interface=127.0.0.1"}})
        daemon = Emaild(config, Clock())
        self.assertIs(daemon.smtp.factory.inflow, daemon.hs.get_inflow())
        self.assertIs(daemon.relay.inflow, daemon.hs.get_inflow())


class ProcessorFeedsInFlowTests(RelayTestCase):
    async def test_the_backlog_after_each_batch_reaches_the_server(self):
        self.handler.max_posts_per_hour = 0
        for i in range(5):
            await self.receive("ada", mail("ada@example.org", self.reply["ada"], f"P{i}", "x"))
        seen = []

        class Recording(InFlow):
            def update(self, waiting):
                seen.append(waiting)
                super().update(waiting)

        processor = self.bare_processor()
        processor.inflow = Recording(reactor, backlog=1, max_delay=1.0, refuse=4)
        processor.batch_rows = 2
        processor.running = True
        processor.listening = True  # as once LISTEN is set up
        await processor._drain()
        # two full batches, then the last row: all that waited, so no
        # fourth (empty) batch is taken
        self.assertEqual(seen, [3, 1, 0])
        self.assertIsNone(processor.inflow.admit())


class RealClientTests(TestCase):
    async def test_smtplib_gets_451_while_the_backlog_is_over_the_bound(self):
        factory = InboundFactory(MemoryHandler(), hostname="mx.test", reactor=reactor)
        factory.inflow = InFlow(reactor, backlog=1, max_delay=0.1, refuse=2)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        def send() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", port.getHost().port, timeout=10) as client:
                client.ehlo("client.test")
                return client.mail("ada@example.org")

        factory.inflow.update(3)
        code, text = await threads.deferToThread(send)
        self.assertEqual((code, text[:5]), (451, b"4.3.2"))
        factory.inflow.update(2)  # delayed by 0.1 s, then accepted
        code, _ = await threads.deferToThread(send)
        self.assertEqual((code, factory.inflow.delayed), (250, 1))
