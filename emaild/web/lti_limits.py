"""
A per-client limit on LTI requests (C{/lti/login} and C{/lti/launch}, 1.1
and 1.3 alike): each client address has a token bucket of C{[lti]
client_burst} requests that refills at C{[lti] client_rate} per second;
a request that finds it empty gets a 429 page with C{Retry-After}.

It keeps a flood from one place (a script replaying launches, a login
loop) from spending the daemon's CPU on signature checks and its database
on login states, while a class behind one NAT starting together stays
well inside the default burst.  The buckets live in the process (they need
no database round trip; a restart forgets them).

The client is the TCP peer; when the peer is a loopback address (a reverse
proxy on the same host), the last address of C{X-Forwarded-For}, which
that proxy appended.  A proxy on another host makes every client one;
raise the limits or set C{client_rate = 0} (no limit) there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import attrs
from twisted.logger import Logger

from emaild.web.responses import client_address

log = Logger()

#: forget full buckets when there are more than this many
MAX_TRACKED = 10_000


@attrs.define
class _Bucket:
    tokens: float
    at: float


class ClientLimits:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float]):
        #: requests per second per client; 0 means no limit
        self.rate = rate
        self.burst = max(1.0, burst)
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        #: when a refusal was last logged (they are logged at most once a minute)
        self.last_logged = float("-inf")

    def take(self, client: str) -> float:
        """
        Count one request of C{client}: 0.0 when it may go on, else the
        seconds until it may.
        """
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._forget_full(now)
            bucket = self._buckets[client] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        full = [client for client, b in self._buckets.items()
                if b.tokens + (now - b.at) * self.rate >= self.burst]
        for client in full:
            del self._buckets[client]
        if len(self._buckets) >= MAX_TRACKED:  # a flood from many addresses: start over
            self._buckets.clear()


def client_key(request) -> str:
    """
    The address a request's limit counts against (see the module's doc).
    """
    peer = getattr(request.getClientAddress(), "host", "") or "?"
    try:
        loopback = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        forwarded = request.getHeader(b"x-forwarded-for")
        if forwarded:
            last = forwarded.decode("latin-1").rsplit(",", 1)[-1].strip()
            if last:
                return last[:64]
    return peer


#: log a refusal by the client limit at most this often (seconds)
LIMIT_LOG_INTERVAL = 60.0


def too_many(self, request, what: str) -> bytes | None:
    """
    For the LTI routes (C{self} is the L{emaild.web.app.WebApp}): the 429
    page when the client has made more LTI requests than C{[lti]
    client_rate} and C{client_burst} allow (L{emaild.web.lti_limits}), else None.
    """
    limits = self.hs.get_lti_limits()
    wait = limits.take(client_key(request))
    if not wait:
        return None
    seconds = max(1, int(wait + 0.999))
    now = limits.clock()
    if now - limits.last_logged >= LIMIT_LOG_INTERVAL:
        limits.last_logged = now
        log.warn("LTI {what} refused (429): too many LTI requests from {client} ([lti] "
                 "client_rate; logged at most once a minute)", what=what,
                 client=client_address(request))
    request.setHeader(b"Retry-After", str(seconds).encode("ascii"))
    return self.pages.error(request, 429, "Too many launches from your network right now. "
                            f"Please try again in {seconds} seconds.")
