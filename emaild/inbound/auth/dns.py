"""
DNS for sender authentication: twisted.names' client on the reactor (never a
blocking call), with a per-query timeout and a TTL cache.

    resolver = Resolver(reactor, servers=[("127.0.0.1", 53)], timeout=5)
    records = await resolver.lookup("example.org", "TXT")

C{lookup} returns the records of the asked type in the answer (after any
CNAME chain the server followed), as plain values: C{A}/C{AAAA} an address
string, C{MX} C{(preference, exchange)}, C{PTR} a name, C{TXT} a tuple of the
record's byte strings.  A name that does not exist (NXDOMAIN) or has no such
records is an empty tuple, and so is a name that cannot exist (an empty or
over-long label, an address literal, characters IDNA cannot encode): asking
would only turn a permanent answer into a timeout.  Everything else (a timeout, SERVFAIL, REFUSED, any
other error code, no route to the server) raises L{TemporaryDNSError}: SPF,
DKIM and DMARC all turn that into C{temperror}, and the SMTP server into a
4xx, never into a pass or a fail.

Answers are cached for their TTL (at most L{MAX_TTL}); empty answers for the
SOA's negative TTL (RFC 2308; at most L{MAX_NEGATIVE_TTL}); failures are not
cached.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from typing import Protocol

from twisted.internet import defer
from twisted.names import client, dns, error

#: the longest we keep an answer, whatever its TTL
MAX_TTL = 3600
#: the longest (and, without an SOA, the) time we remember "no such records"
MAX_NEGATIVE_TTL = 300
CACHE_SIZE = 10_000
#: the expiry of an answer that cannot change (a name that cannot exist)
NEVER_EXPIRES = float("inf")
RESOLV_CONF = "/etc/resolv.conf"

#: a label we can ask about (letters, digits, hyphen; underscore for
#: _dmarc, _domainkey and selectors)
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")

_TYPES = {"A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "PTR": dns.PTR, "TXT": dns.TXT}


class DNSLookup(Protocol):
    """What SPF and DMARC ask: a L{Resolver}, or a L{Recording} of one."""

    async def lookup(self, name: str, qtype: str) -> tuple: ...


class TemporaryDNSError(Exception):
    """
    The lookup could not be answered now (timeout, SERVFAIL...); it may work later.
    """


def _value(payload, qtype: str):
    if qtype in ("A", "AAAA"):
        return socket.inet_ntop(socket.AF_INET if qtype == "A" else socket.AF_INET6,
                                payload.address)
    if qtype == "MX":
        return (payload.preference, payload.name.name.decode("ascii", "replace"))
    if qtype == "PTR":
        return payload.name.name.decode("ascii", "replace")
    return tuple(payload.data)


class Resolver:
    """
    @param servers: C{(host, port)} resolvers to ask; empty: those of
        C{/etc/resolv.conf}.
    @param timeout: seconds to wait for each server's answer.
    """

    def __init__(self, reactor, servers: Sequence[tuple[str, int]] = (), timeout: float = 5.0,
                 cache_size: int = CACHE_SIZE):
        self.reactor = reactor
        self.timeout = timeout
        self.cache_size = cache_size
        self.client = client.Resolver(servers=list(servers or system_servers()),
                                      timeout=(timeout,), reactor=reactor)
        #: (name, type) -> (expires at, records)
        self._cache: dict[tuple[str, str], tuple[float, tuple]] = {}
        #: queries sent to a server (the rest came from the cache)
        self.queries = 0

    async def lookup(self, name: str, qtype: str) -> tuple:
        """
        The C{qtype} records of C{name} (see the module docstring).

        @raise TemporaryDNSError: no usable answer now.
        """
        return (await self.lookup_until(name, qtype))[1]

    async def lookup_until(self, name: str, qtype: str) -> tuple[float, tuple]:
        """
        L{lookup}, with the time (the reactor's clock) until which the
        answer may be used: what a result computed from it may be
        remembered for.  An answer that is not cached (TTL 0) is good only
        now.

        @raise TemporaryDNSError: no usable answer now.
        """
        name = _ascii_name(name)
        if name is None:
            return NEVER_EXPIRES, ()
        key = (name, qtype)
        now = self.reactor.seconds()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > now:
                return cached
            del self._cache[key]
        self.queries += 1
        try:
            answers, authority, _additional = await self._query(name, _TYPES[qtype])
        except error.DNSNameError as e:  # NXDOMAIN
            answers, authority = [], e.args[0].authority if e.args and hasattr(
                e.args[0], "authority") else []
        except (error.DNSQueryTimeoutError, defer.TimeoutError):
            raise TemporaryDNSError(f"no answer for {name} {qtype} within {self.timeout:g}s") \
                from None
        except error.DomainError as e:  # SERVFAIL, REFUSED, FORMERR, NOTIMP, unknown
            raise TemporaryDNSError(f"{name} {qtype}: {type(e).__name__}") from None
        except Exception as e:  # no route, no servers, a broken answer
            raise TemporaryDNSError(f"{name} {qtype}: {e!r}") from None
        wanted = _TYPES[qtype]
        records = [rr for rr in answers if rr.type == wanted]
        values = tuple(_value(rr.payload, qtype) for rr in records)
        if records:
            ttl = min(min(rr.ttl for rr in records), MAX_TTL)
        else:
            soa = [rr for rr in authority if rr.type == dns.SOA]
            ttl = min([min(rr.ttl, rr.payload.minimum) for rr in soa] + [MAX_NEGATIVE_TTL])
        if ttl > 0:
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))  # the oldest entry
            self._cache[key] = (now + ttl, values)
        return now + max(ttl, 0), values

    def _query(self, name: str, qtype: int) -> defer.Deferred:
        d = self.client.query(dns.Query(name, qtype, dns.IN), timeout=(self.timeout,))
        # the client gives each server C{timeout}; this bounds the whole
        # lookup however many servers there are (and any TCP retry)
        d.addTimeout(self.timeout * (len(self.client.servers) or 1) + self.timeout,
                     self.reactor)
        return d

    def close(self) -> None:
        """
        Drop the TCP connections to servers (kept open after a truncated answer).
        """
        for protocol in list(self.client.connections):
            protocol.transport.loseConnection()


def _ascii_name(name: str) -> str | None:
    """The name in the ASCII form DNS carries, or None if it cannot be one."""
    name = name.rstrip(".").lower()
    try:
        name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        return None
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        return None
    return name


def system_servers(path: str = RESOLV_CONF) -> list[tuple[str, int]]:
    """
    The C{nameserver} lines of resolv.conf (read once, at start), or the
    local resolver when there are none (as the C library does).
    """
    servers = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    servers.append((parts[1].split("%")[0], 53))
    except OSError:
        pass
    return servers or [("127.0.0.1", 53)]


class Recording:
    """
    A view of a L{Resolver} for one computation (an SPF evaluation, a DMARC
    policy lookup) that notes until when every answer it gave may be used:
    a result made only from those answers may be remembered until
    C{expires}, and no longer.  After a temporary failure, C{expires} is
    minus infinity (such a result is never remembered).
    """

    def __init__(self, resolver: Resolver):
        self.resolver = resolver
        self.reactor = resolver.reactor
        self.expires = NEVER_EXPIRES

    async def lookup(self, name: str, qtype: str) -> tuple:
        try:
            expires, values = await self.resolver.lookup_until(name, qtype)
        except TemporaryDNSError:
            self.expires = -NEVER_EXPIRES
            raise
        self.expires = min(self.expires, expires)
        return values


class ResultCache:
    """
    Results computed from DNS answers, each kept until the earliest of
    those answers expires (L{Recording.expires}), at most C{size} of them.
    """

    def __init__(self, reactor, size: int = CACHE_SIZE):
        self.reactor = reactor
        self.size = size
        self._entries: dict = {}

    def get(self, key):
        """The result remembered for C{key}, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self.reactor.seconds():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key, expires: float, result) -> None:
        if expires <= self.reactor.seconds():
            return
        if key not in self._entries and len(self._entries) >= self.size:
            self._entries.pop(next(iter(self._entries)))  # the oldest entry
        self._entries[key] = (expires, result)
