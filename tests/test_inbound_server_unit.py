"""
Fast unit tests of the inbound SMTP protocol (emaild.inbound.server) over a
StringTransport, with a task.Clock as the reactor: no sockets, no threads.
The end-to-end tests with real clients are in test_inbound_server.py.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from emaild.inbound.server import InboundFactory
from tests.test_inbound_server import MemoryHandler


class Session:
    """One protocol on a StringTransport; C{send} returns the new replies."""

    def __init__(self, factory: InboundFactory, host: str = "192.0.2.1", port: int = 4321):
        self.factory = factory
        address = IPv4Address("TCP", host, port)
        self.protocol = factory.buildProtocol(address)
        self.transport = StringTransport(peerAddress=address)
        self.protocol.makeConnection(self.transport)
        self.banner = self.take()

    def take(self) -> list[bytes]:
        out = self.transport.value().split(b"\r\n")[:-1]
        self.transport.clear()
        return out

    def send(self, data: bytes) -> list[bytes]:
        self.protocol.dataReceived(data)
        return self.take()

    def lose(self) -> None:
        self.protocol.connectionLost(None)


class UnitTestCase(TestCase):
    def factory(self, **kw) -> InboundFactory:
        self.clock = Clock()
        self.handler = MemoryHandler()
        return InboundFactory(self.handler, hostname="mx.test", reactor=self.clock, **kw)


class ReadinessTests(UnitTestCase):
    def test_not_ready_is_421_4_3_2_and_closed(self):
        ready = [False]
        factory = self.factory(is_ready=lambda: ready[0])
        s = Session(factory)
        self.assertEqual(s.banner, [b"421 4.3.2 Service not yet ready, try again later"])
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(factory.sessions, set())
        ready[0] = True
        s = Session(factory)
        self.assertEqual(s.banner, [b"220 mx.test ESMTP"])
        self.assertFalse(s.transport.disconnecting)

    def test_ready_by_default(self):
        self.assertEqual(Session(self.factory()).banner, [b"220 mx.test ESMTP"])

    def test_inbound_listener_passes_is_ready(self):
        from twisted.internet import reactor

        from emaild.config import load_config
        from emaild.inbound.server import inbound_listener

        config = load_config(None, environ={}, overrides={
            "smtp": {"endpoint": "tcp:0:interface=127.0.0.1"}})
        service = inbound_listener(config, MemoryHandler(), reactor, is_ready=lambda: False)
        self.assertFalse(service.factory.is_ready())
        self.assertTrue(inbound_listener(config, MemoryHandler(), reactor).factory.is_ready())
