"""
A TCP proxy that delays every byte by half a round-trip time in each
direction, preserving order: a relay "RTT ms away" on a kernel without netem.

Each direction keeps a queue of (due time, chunk); one timer per direction
writes every chunk that is due and re-arms for the next, so chunks leave in
the order they came, each RTT/2 after it arrived.  A close travels the same
way (after the data before it).  There is no flow control: meant for
benchmarks and tests with small messages, not bulk transfers.

The proxy must not add a delay of its own, or a benchmark through it
measures the proxy: both of its sockets have TCP_NODELAY; run as a
program it uses the select reactor (epoll and poll round every timeout up
to a whole millisecond); and it arms its timers early by how late they
have been firing (the process's wake-up time, a running estimate).  What
is left is the two extra hops through this process, about 0.1 ms each on
an idle machine.  Check it with a ping-pong through it (no SMTP):

    python bench/delay_proxy.py --check 1,10

Run it:

    python bench/delay_proxy.py --listen 2600 --target 127.0.0.1:2525 --rtt-ms 10 \
        [--trace chunks.txt]

or, inside a Twisted program (tests):

    proxy = DelayProxy(reactor, "127.0.0.1", target_port, rtt=0.002)
    port = proxy.listen()        # 127.0.0.1, an ephemeral port
    ...
    await proxy.stop()

With a trace, L{bench.proxy_measure.summarise_trace} says where each
connection's round trips went: the client's and the server's turnaround,
and the proxy's own error.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

#: release a chunk this much before its due time rather than arm a timer
#: for the rest: a timer cannot be more precise than that
EARLY = 0.00005
#: the most the timers are armed early by (a wake-up estimate above this is
#: the machine's load, not the timer)
MAX_WAKE_UP = 0.001


class Direction:
    """
    Bytes travelling one way, each chunk released C{delay} after it came.

    One timer per direction, armed for the oldest chunk's due time: chunks
    leave in the order they came, and a chunk that is due goes out at once,
    never behind a later one.
    """

    def __init__(self, proxy: DelayProxy, pair: int, name: str, delay: float):
        self.proxy = proxy
        self.reactor = proxy.reactor
        self.pair = pair
        self.name = name
        self.delay = delay
        self.queue: collections.deque = collections.deque()
        self.timer = None
        #: when the timer was meant to fire (for the wake-up estimate)
        self.armed_for: float | None = None
        #: the transport the bytes go to (None until connected)
        self.out = None
        self.closing = False
        self.dead = False

    def push(self, chunk: bytes | None) -> None:
        """Queue a chunk (None: the sender closed)."""
        if self.dead:
            return
        now = self.reactor.seconds()
        self.proxy.trace(now, self.pair, self.name, "in", chunk)
        self.queue.append((now + self.delay, chunk))
        if self.timer is None:
            self._arm(now + self.delay, now)

    def _arm(self, due: float, now: float) -> None:
        # A timer fires late by the time the process takes to wake up (about
        # 0.1-0.2 ms on an idle virtual machine, more under load): arm it
        # that much early (the proxy's running estimate), so that chunks
        # leave when they are due, not a wake-up after it.
        at = due - self.proxy.wake_up
        self.armed_for = at
        self.timer = self.reactor.callLater(max(0.0, at - now), self.release)

    def release(self) -> None:
        self.timer = None
        if self.out is None:
            return  # the far side is not connected yet; attach() releases
        now = self.reactor.seconds()
        proxy = self.proxy
        if self.armed_for is not None:
            proxy.woke_up(now - self.armed_for)
            self.armed_for = None
        queue = self.queue
        parts = []
        horizon = now + proxy.wake_up + EARLY
        while queue and queue[0][0] <= horizon:
            chunk = queue.popleft()[1]
            if chunk is None:
                self.closing = True
                break
            parts.append(chunk)
        if parts:
            data = b"".join(parts)
            self.proxy.trace(now, self.pair, self.name, "out", data)
            self.out.write(data)
        if self.closing:
            self.cancel()
            self.out.loseConnection()
            return
        if queue:
            self._arm(queue[0][0], now)

    def attach(self, transport) -> None:
        self.out = transport
        if self.queue and self.timer is None:
            self.release()

    def cancel(self) -> None:
        self.dead = True
        self.queue.clear()
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None


def _no_delay(transport) -> None:
    """
    TCP_NODELAY: a small write goes out now, not when the peer has
    acknowledged the last one (Nagle), which would add a delay of its own.
    """
    try:
        transport.setTcpNoDelay(True)
    except (AttributeError, OSError):
        pass  # not a TCP transport (tests' string transports)


class _Upstream(protocol.Protocol):
    """The proxy's connection to the target."""

    def __init__(self, pair: _Downstream):
        self.pair = pair

    def connectionMade(self):
        _no_delay(self.transport)

    def dataReceived(self, data):
        self.pair.last_from_client = False
        self.pair.back.push(data)

    def connectionLost(self, reason):
        self.pair.back.push(None)
        self.pair.side_lost()


class _Downstream(protocol.Protocol):
    """A client's connection to the proxy."""

    def __init__(self, proxy: DelayProxy):
        self.proxy = proxy
        self.up: _Upstream | None = None
        self.last_from_client = False
        #: connections of this pair still open (client side, target side)
        self.open = 2

    def connectionMade(self):
        _no_delay(self.transport)
        proxy = self.proxy
        proxy.active.add(self)
        proxy.pairs += 1
        delay = proxy.rtt / 2
        self.forth = Direction(proxy, proxy.pairs, "c>s", delay)  # client -> target
        self.back = Direction(proxy, proxy.pairs, "s>c", delay)   # target -> client
        self.back.attach(self.transport)
        self.up = _Upstream(self)
        endpoint = TCP4ClientEndpoint(proxy.reactor, proxy.host, proxy.port)
        d = self.connecting = connectProtocol(endpoint, self.up)
        d.addCallbacks(lambda up: self.forth.attach(up.transport), self._no_target)

    def _no_target(self, failure):
        self.side_lost()
        self.transport.abortConnection()

    def dataReceived(self, data):
        if not self.last_from_client:
            # the client speaks again after the server did: one more turn
            self.last_from_client = True
            self.proxy.turns += 1
        self.forth.push(data)

    def connectionLost(self, reason):
        self.forth.push(None)
        if self.forth.out is None:
            self.forth.cancel()
        self.side_lost()

    def side_lost(self):
        self.open -= 1
        if self.open == 0:
            self.forth.cancel()
            self.back.cancel()
            self.proxy.active.discard(self)
            self.proxy.lost()

    def abort(self):
        self.forth.cancel()
        self.back.cancel()
        if self.up.transport is not None:
            self.up.transport.abortConnection()
        else:
            self.connecting.cancel()  # errback: _no_target
        self.transport.abortConnection()


class DelayProxy(protocol.Factory):
    """
    @param trace: a binary file to append one line per chunk to (see
        L{trace}), or None.
    """

    noisy = False

    def __init__(self, reactor, host: str, port: int, rtt: float, trace=None):
        self.reactor = reactor
        self.host = host
        self.port = port
        self.rtt = rtt
        #: client connections, until both of their sides are closed
        self.active: set[_Downstream] = set()
        #: client connections so far (each one's number in the trace)
        self.pairs = 0
        #: times a client started sending after hearing from the server, over
        #: all connections: the round trips the client waited for
        self.turns = 0
        #: how late a timer fires (seconds): a running estimate, which
        #: timers are armed early by (see Direction._arm)
        self.wake_up = 0.0
        self._trace_file = trace
        self._trace_lines: list[bytes] = []
        self._listening = None
        self._gone: list[defer.Deferred] = []

    def woke_up(self, late: float) -> None:
        """A timer fired C{late} seconds after it was armed for."""
        # an average over the last few dozen wake-ups, bounded: one long
        # stall (the machine busy elsewhere) must not shift every release
        late = min(max(late, 0.0), MAX_WAKE_UP)
        self.wake_up += (late - self.wake_up) / 32

    def trace(self, now: float, pair: int, direction: str, event: str,
              chunk: bytes | None) -> None:
        """
        With a trace file: "<seconds> <connection> <c>s|s>c> <in|out> <bytes>
        <first command or reply> <SMTP: d if an end of data is in it, m if
        a MAIL FROM, else ->" -- a chunk arriving or leaving.  Buffered,
        written by L{flush_trace}.
        """
        if self._trace_file is None:
            return
        if chunk is None:
            what, size, smtp = b"<close>", 0, b"-"
        else:
            size = len(chunk)
            what = chunk[:12].splitlines()[0].replace(b" ", b"_") if chunk.strip() else b"-"
            smtp = ((b"d" if b"\r\n.\r\n" in chunk else b"")
                    + (b"m" if b"MAIL FROM:" in chunk else b"")) or b"-"
        self._trace_lines.append(b"%.6f %d %s %s %d %s %s\n" % (
            now, pair, direction.encode(), event.encode(), size, what, smtp))

    def flush_trace(self) -> None:
        if self._trace_file is not None and self._trace_lines:
            lines, self._trace_lines = self._trace_lines, []
            self._trace_file.write(b"".join(lines))
            self._trace_file.flush()

    def buildProtocol(self, addr):
        p = _Downstream(self)
        p.factory = self
        return p

    def listen(self, port: int = 0, interface: str = "127.0.0.1") -> int:
        self._listening = self.reactor.listenTCP(port, self, interface=interface)
        return self._listening.getHost().port

    def lost(self):
        if not self.active:
            waiters, self._gone = self._gone, []
            for d in waiters:
                d.callback(None)

    def stop(self) -> defer.Deferred:
        """Stop listening and drop every connection; fires when they are gone."""
        ds = []
        if self._listening is not None:
            ds.append(defer.maybeDeferred(self._listening.stopListening))
            self._listening = None
        if self.active:
            d = defer.Deferred()
            self._gone.append(d)
            ds.append(d)
            for p in list(self.active):
                p.abort()
        return defer.gatherResults(ds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, help="port on 127.0.0.1")
    parser.add_argument("--target", help="HOST:PORT")
    parser.add_argument("--rtt-ms", type=float)
    parser.add_argument("--trace", help="append a line per chunk to this file")
    parser.add_argument("--check", metavar="RTTS",
                        help="measure the proxy's real round trip at these RTTs (ms, comma"
                             "-separated) with a ping-pong through it to an echo server")
    parser.add_argument("--count", type=int, default=300, help="exchanges per --check")
    args = parser.parse_args()
    if args.check:
        from bench.proxy_measure import check

        check([float(x) for x in args.check.split(",")], args.count)
        return
    if args.listen is None or args.target is None or args.rtt_ms is None:
        parser.error("--listen, --target and --rtt-ms are required (or --check)")
    # The select reactor, not the default epoll one: epoll (and poll) take
    # their timeout in whole milliseconds, rounded up, so every release would
    # be up to 1 ms late in each direction; select's timeout is in
    # microseconds.  A proxy has a handful of sockets, where select is cheap.
    from twisted.internet import selectreactor

    selectreactor.install()
    from twisted.internet import reactor, task

    host, _, port = args.target.rpartition(":")
    trace = open(args.trace, "ab") if args.trace else None  # noqa: SIM115 (open for the run)
    proxy = DelayProxy(reactor, host, int(port), args.rtt_ms / 1000.0, trace=trace)
    if trace is not None:
        task.LoopingCall(proxy.flush_trace).start(0.5, now=False)
        reactor.addSystemEventTrigger("before", "shutdown", proxy.flush_trace)
    proxy.listen(args.listen)
    print(f"delaying 127.0.0.1:{args.listen} -> {args.target} by {args.rtt_ms:g} ms RTT",
          flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for bench.proxy_measure
    main()
