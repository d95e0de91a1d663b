"""
A real authoritative DNS server on loopback for the sender authentication
tests: twisted.names' server over UDP and TCP on one random 127.0.0.1 port,
answering from an in-memory zone, and counting the queries it gets.

    server = ZoneServer("test", {"example.test": [dns.Record_TXT(b"v=spf1 -all")]})
    port = server.start()          # then [dns] servers = [f"127.0.0.1:{port}"]
    ...
    await server.stop()

L{SilentServer} takes queries and never answers (a DNS timeout).
"""

from __future__ import annotations

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import CannotListenError
from twisted.names import authority, dns, server


def txt(text: str | bytes) -> dns.Record_TXT:
    """A TXT record, split into the 255-byte strings DNS carries."""
    data = text.encode("ascii") if isinstance(text, str) else text
    return dns.Record_TXT(*[data[i:i + 255] for i in range(0, len(data), 255)] or [b""],
                          ttl=300)


class MemoryAuthority(authority.FileAuthority):
    """An authority for C{zone} whose records are given, not read from a file."""

    def __init__(self, zone: str, records: dict[str, list], servfail=()):
        self.zone, self.initial = zone, records
        super().__init__(None)
        self.queries: list[tuple[str, int]] = []
        #: names answered SERVFAIL (a broken or unreachable authority behind)
        self.servfail = {name.lower() for name in servfail}

    def loadFile(self, filename):
        self.soa = (self.zone.encode(), dns.Record_SOA(
            mname=f"ns.{self.zone}", rname=f"hostmaster.{self.zone}", serial=1,
            refresh=3600, retry=600, expire=86400, minimum=60, ttl=60))
        self.records = {self.zone.encode(): [self.soa[1]]}
        for name, records in self.initial.items():
            self.records.setdefault(name.lower().encode(), []).extend(records)

    def _lookup(self, name, cls, type, timeout=None):
        text = name.decode() if isinstance(name, bytes) else name
        self.queries.append((text, type))
        if text.lower() in self.servfail:
            # anything but a DomainError is answered SERVFAIL by the server factory
            return defer.fail(RuntimeError(f"test: SERVFAIL for {text}"))
        return super()._lookup(name, cls, type, timeout)


class _ServerFactory(server.DNSServerFactory):
    """
    Truncates UDP answers over 512 bytes (RFC 1035 without EDNS), as real
    servers do, so that clients must retry over TCP.
    """

    def sendReply(self, protocol, message, address):
        if address is not None and len(message.toStr()) > 512:
            message.answers, message.authority, message.additional = [], [], []
            message.trunc = 1
        super().sendReply(protocol, message, address)


class ZoneServer:
    """
    Authoritative for C{zone} with C{records}, and for each zone of
    C{more_zones} (zone -> records); the names in C{servfail} get SERVFAIL.
    """

    def __init__(self, zone: str, records: dict[str, list],
                 more_zones: dict[str, dict[str, list]] | None = None, servfail=()):
        zones = {zone: records, **(more_zones or {})}
        self.authorities = [MemoryAuthority(z, r, servfail) for z, r in zones.items()]
        self.factory = _ServerFactory(authorities=self.authorities)
        self.factory.noisy = False
        self.ports = []

    @property
    def queries(self) -> list[tuple[str, int]]:
        return [q for authority in self.authorities for q in authority.queries]

    def start(self) -> int:
        # TCP first on a free port, then UDP on the same number
        for _ in range(20):
            tcp = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
            port = tcp.getHost().port
            try:
                udp = reactor.listenUDP(port, dns.DNSDatagramProtocol(self.factory),
                                        interface="127.0.0.1")
            except CannotListenError:  # the UDP port of that number is taken
                tcp.stopListening()
                continue
            self.ports = [tcp, udp]
            return port
        raise RuntimeError("no free port for the test DNS server")

    def stop(self):
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports])


class _Discard(protocol.DatagramProtocol):
    def __init__(self):
        self.received = 0

    def datagramReceived(self, data, addr):
        self.received += 1


class SilentServer:
    """Receives DNS queries over UDP and never answers."""

    def start(self) -> int:
        self.protocol = _Discard()
        self.port = reactor.listenUDP(0, self.protocol, interface="127.0.0.1")
        return self.port.getHost().port

    def stop(self):
        return defer.maybeDeferred(self.port.stopListening)

