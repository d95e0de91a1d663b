"""
The benchmarks' delaying proxy (bench/delay_proxy.py): each chunk leaves
RTT/2 after it arrived, in order, with the timers' own lateness taken out;
both of its sockets have TCP_NODELAY; its trace says where a connection's
round trips went.  The SMTP client's pipelining through it is tested in
test_smtp_pipelining.py.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from bench.delay_proxy import DelayProxy, Direction, summarise_trace


class LateClock(Clock):
    """A Clock whose calls run C{late} seconds after they were due."""

    def __init__(self, late: float):
        super().__init__()
        self.late = late

    def run_next(self) -> None:
        """Advance to the next call's time plus the lateness, and run it."""
        call = min(self.getDelayedCalls(), key=lambda c: c.getTime())
        self.advance(call.getTime() + self.late - self.seconds())


class DirectionTests(TestCase):
    def direction(self, clock, delay=0.005):
        proxy = DelayProxy(clock, "127.0.0.1", 1, rtt=2 * delay)
        d = Direction(proxy, 1, "c>s", delay)
        out = StringTransport()
        d.attach(out)
        return proxy, d, out

    def test_each_chunk_leaves_half_the_rtt_after_it_came_in_order(self):
        clock = Clock()
        _, d, out = self.direction(clock)
        d.push(b"a")
        clock.advance(0.002)
        d.push(b"b")
        clock.advance(0.0029)
        self.assertEqual(out.value(), b"")
        clock.advance(0.0001)  # 5 ms after "a"
        self.assertEqual(out.value(), b"a")
        clock.advance(0.0019)
        self.assertEqual(out.value(), b"a")
        clock.advance(0.0001)  # 5 ms after "b"
        self.assertEqual(out.value(), b"ab")

    def test_timers_are_armed_early_by_how_late_they_fire(self):
        # every timer fires 0.3 ms late: the proxy learns it and arms its
        # timers that much early, so chunks leave on time again
        clock = LateClock(0.0003)
        proxy, d, out = self.direction(clock)
        lateness = []
        for n in range(200):
            arrived = clock.seconds()
            d.push(b"x")
            clock.run_next()
            lateness.append(clock.seconds() - (arrived + 0.005))
            self.assertEqual(len(out.value()), n + 1)
            clock.advance(0.001)
        self.assertAlmostEqual(lateness[0], 0.0003, places=6)
        self.assertLess(abs(lateness[-1]), 0.00002)
        self.assertAlmostEqual(proxy.wake_up, 0.0003, places=5)

    def test_one_long_stall_does_not_move_every_release(self):
        clock = Clock()
        proxy, _, _ = self.direction(clock)
        proxy.woke_up(0.5)  # the machine was busy elsewhere for half a second
        self.assertLessEqual(proxy.wake_up, 0.001)

    def test_a_close_follows_the_data_before_it(self):
        clock = Clock()
        _, d, out = self.direction(clock)
        d.push(b"last words")
        d.push(None)
        clock.advance(0.005)
        self.assertEqual(out.value(), b"last words")
        self.assertTrue(out.disconnecting)


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class Collect(Protocol):
    def __init__(self):
        self.received = b""
        self.waiting: defer.Deferred | None = None

    def dataReceived(self, data):
        self.received += data
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.callback(None)


class SocketTests(TestCase):
    async def test_both_sides_have_tcp_nodelay_and_the_trace_sees_the_turns(self):
        from twisted.internet.protocol import Factory

        server = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(server.stopListening)
        trace = self.mktemp()
        with open(trace, "ab") as f:
            proxy = DelayProxy(reactor, "127.0.0.1", server.getHost().port, rtt=0.004,
                               trace=f)
            port = proxy.listen()
            self.addCleanup(proxy.stop)
            client = Collect()
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
            for n in range(3):
                client.waiting = defer.Deferred()
                client.transport.write(b"ping %d\r\n" % n)
                await client.waiting
            self.assertEqual(client.received, b"ping 0\r\nping 1\r\nping 2\r\n")
            (pair,) = proxy.active
            self.assertTrue(pair.transport.getTcpNoDelay())
            self.assertTrue(pair.up.transport.getTcpNoDelay())
            client.transport.loseConnection()
            proxy.flush_trace()
        summary = summarise_trace(trace, 0.004)
        # three pings: the first starts the count, two turn-to-turn times
        self.assertIn("2 turns", summary)
        self.assertIn("client writes per turn (median): 1", summary)
