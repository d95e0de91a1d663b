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

from bench.delay_proxy import DelayProxy, Direction
from bench.proxy_measure import summarise_trace


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


class TraceSummaryTests(TestCase):
    def test_turns_turnarounds_and_data_without_a_next_envelope(self):
        # one connection, 10 ms RTT: the greeting, then two messages of
        # which the client sent the first's data with the second's envelope
        # and the second's data alone (its last message)
        lines = [
            "0.000000 1 s>c in 20 220_relay -",
            "0.005000 1 s>c out 20 220_relay -",
            "0.005500 1 c>s in 80 MAIL_FROM:<a m",     # client: 0.5 ms
            "0.010500 1 c>s out 80 MAIL_FROM:<a m",
            "0.010700 1 s>c in 30 250_ok -",            # server: 0.2 ms
            "0.015700 1 s>c out 30 250_ok -",
            "0.016700 1 c>s in 1200 From:_x dm",        # client: 1.0 ms
            "0.021700 1 c>s out 1200 From:_x dm",
            "0.021900 1 s>c in 40 250_ok -",
            "0.026900 1 s>c out 40 250_ok -",
            "0.027400 1 c>s in 1100 From:_y d",         # client: 0.5 ms
            "0.032400 1 c>s out 1100 From:_y d",
        ]
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        summary = summarise_trace(path, 0.010)
        self.assertIn("2 turns", summary)
        self.assertIn("turn to turn: median 10.95", summary)
        self.assertIn("client turnaround: median 0.50 mean 0.67", summary)
        self.assertIn("server turnaround: median 0.20", summary)
        self.assertIn("release - (arrival + RTT/2): median 0.00", summary)
        self.assertIn("no next envelope: 1", summary)
