"""
A TCP proxy that delays every byte by half a round-trip time in each
direction, preserving order: a relay "RTT ms away" on a kernel without netem.

Each direction keeps a queue of (due time, chunk); one timer per direction
writes every chunk that is due and re-arms for the next, so chunks leave in
the order they came, each RTT/2 after it arrived.  A close travels the same
way (after the data before it).  There is no flow control: meant for
benchmarks and tests with small messages, not bulk transfers.

    python bench/delay_proxy.py --listen 2600 --target 127.0.0.1:2525 --rtt-ms 10

or, inside a Twisted program (tests):

    proxy = DelayProxy(reactor, "127.0.0.1", target_port, rtt=0.002)
    port = proxy.listen()        # 127.0.0.1, an ephemeral port
    ...
    await proxy.stop()
"""

from __future__ import annotations

import argparse
import collections

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol


class _Direction:
    """Bytes travelling one way, each chunk released `delay` after it came."""

    def __init__(self, reactor, delay: float):
        self.reactor = reactor
        self.delay = delay
        self.queue: collections.deque = collections.deque()
        self.timer = None
        #: the transport the bytes go to (None until connected)
        self.out = None
        self.closing = False
        self.dead = False

    def push(self, chunk: bytes | None) -> None:
        """Queue a chunk (None: the sender closed)."""
        if self.dead:
            return
        self.queue.append((self.reactor.seconds() + self.delay, chunk))
        if self.timer is None:
            self.timer = self.reactor.callLater(self.delay, self.release)

    def release(self) -> None:
        self.timer = None
        if self.out is None:
            return  # the far side is not connected yet; attach() releases
        now = self.reactor.seconds()
        queue = self.queue
        parts = []
        while queue and queue[0][0] <= now + 0.0001:
            chunk = queue.popleft()[1]
            if chunk is None:
                self.closing = True
                break
            parts.append(chunk)
        if parts:
            self.out.write(b"".join(parts))
        if self.closing:
            self.cancel()
            self.out.loseConnection()
            return
        if queue:
            self.timer = self.reactor.callLater(max(0.0, queue[0][0] - now), self.release)

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


class _Upstream(protocol.Protocol):
    """The proxy's connection to the target."""

    def __init__(self, pair: _Downstream):
        self.pair = pair

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
        proxy = self.proxy
        proxy.active.add(self)
        delay = proxy.rtt / 2
        self.forth = _Direction(proxy.reactor, delay)  # client -> target
        self.back = _Direction(proxy.reactor, delay)   # target -> client
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
    noisy = False

    def __init__(self, reactor, host: str, port: int, rtt: float):
        self.reactor = reactor
        self.host = host
        self.port = port
        self.rtt = rtt
        #: client connections, until both of their sides are closed
        self.active: set[_Downstream] = set()
        #: times a client started sending after hearing from the server, over
        #: all connections: the round trips the client waited for
        self.turns = 0
        self._listening = None
        self._gone: list[defer.Deferred] = []

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
    parser.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--rtt-ms", type=float, required=True)
    args = parser.parse_args()
    from twisted.internet import reactor

    host, _, port = args.target.rpartition(":")
    proxy = DelayProxy(reactor, host, int(port), args.rtt_ms / 1000.0)
    proxy.listen(args.listen)
    print(f"delaying 127.0.0.1:{args.listen} -> {args.target} by {args.rtt_ms:g} ms RTT",
          flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
