"""
The platforms' public keys: each platform's JWKS (RFC 7517), fetched with
Twisted's HTTP client (never blocking the reactor) and cached for as long
as its C{Cache-Control: max-age} or C{Expires} allows.

Only RSA keys meant for signatures with RS256 are kept (a JWK that says
C{use} other than C{sig}, or C{alg} other than C{RS256}, or has a modulus
under 2048 bits, is skipped), and each becomes an RSA public key object, so
nothing in a JWKS can make us verify with another algorithm.

An unknown C{kid} (the platform rotated its keys) re-fetches the set at
once, but at most once every L{REFETCH_INTERVAL} seconds per URL, so a
stream of tokens naming made-up kids cannot make us hammer the platform.
When a fetch fails, keys from the last good fetch are still used.
"""

from __future__ import annotations

import base64
import email.utils
import json
import re
from collections.abc import Callable

import attrs
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.client import Agent, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

log = Logger()

#: seconds: cache lifetime when the response says nothing, and the bounds
DEFAULT_TTL = 300.0
MAX_TTL = 86400.0
#: at most one re-fetch for an unknown kid this often (seconds) per URL
REFETCH_INTERVAL = 10.0
#: a JWKS bigger than this is refused
MAX_BODY = 512 * 1024
MIN_RSA_BITS = 2048


class JwksError(Exception):
    """
    The platform's keys cannot be had, or have no key with the kid; the
    message says which and why.
    """


class UnknownKid(JwksError):
    pass


@attrs.define
class _Entry:
    keys: dict[str, rsa.RSAPublicKey]
    fetched_at: float
    expires_at: float


def _b64url_int(value) -> int:
    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9_-]+$", value):
        raise ValueError("not base64url")
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


def rsa_keys(jwks) -> dict[str, rsa.RSAPublicKey]:
    """
    kid -> RSA public key of the usable keys of a parsed JWK Set.
    """
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise JwksError("the key set is not a JSON object with a \"keys\" list")
    found = {}
    for jwk in jwks["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("kty") != "RSA" or jwk.get("use", "sig") != "sig" \
                or jwk.get("alg", "RS256") != "RS256":
            continue
        try:
            key = rsa.RSAPublicNumbers(_b64url_int(jwk.get("e")),
                                       _b64url_int(jwk.get("n"))).public_key()
        except (ValueError, TypeError):
            log.warn("JWKS: skipping key {kid!r}: its n or e is not a valid number",
                     kid=jwk["kid"])
            continue
        if key.key_size < MIN_RSA_BITS:
            log.warn("JWKS: skipping key {kid!r}: {bits} bits, under {min}", kid=jwk["kid"],
                     bits=key.key_size, min=MIN_RSA_BITS)
            continue
        found[jwk["kid"]] = key
    return found


def cache_lifetime(headers: Headers, now: float) -> float:
    """
    Seconds the response may be cached, from C{Cache-Control} (C{no-store},
    C{no-cache}, C{max-age}) or else C{Expires}; L{DEFAULT_TTL} when it says
    nothing; at most L{MAX_TTL}.
    """
    control = ",".join(v.decode("latin-1") for v in
                       headers.getRawHeaders(b"cache-control", [])).lower()
    if "no-store" in control or "no-cache" in control:
        return 0.0
    match = re.search(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", control)
    if match:
        return min(float(match.group(1)), MAX_TTL)
    expires = headers.getRawHeaders(b"expires")
    if expires:
        try:
            when = email.utils.parsedate_to_datetime(expires[0].decode("latin-1")).timestamp()
        except (TypeError, ValueError, IndexError):
            return 0.0  # an invalid Expires means "already expired" (RFC 9111 5.3)
        return min(max(0.0, when - now), MAX_TTL)
    return DEFAULT_TTL


class _Body(Protocol):
    def __init__(self, done: defer.Deferred, limit: int):
        self.done, self.limit, self.parts, self.size = done, limit, [], 0
        self.transport = None

    def dataReceived(self, data):
        self.size += len(data)
        if self.size > self.limit:
            self.transport.stopProducing()
            if not self.done.called:
                self.done.callback(None)
            return
        self.parts.append(data)

    def connectionLost(self, reason):
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


def read_body(response, limit: int) -> defer.Deferred:
    """
    The response body, or None when it is longer than C{limit} bytes.
    Cancelling (a timeout, a shutdown) stops reading it.
    """

    def stop_reading(_):
        if body.transport is not None:
            body.transport.stopProducing()

    done: defer.Deferred = defer.Deferred(stop_reading)
    body = _Body(done, limit)
    response.deliverBody(body)
    return done


class JwksCache:
    """
    C{await cache.key(url, kid)}: the RSA public key, fetching or
    re-fetching the set as needed.
    """

    def __init__(self, reactor, timeout: float = 10.0, agent=None,
                 clock: Callable[[], float] | None = None):
        self.reactor = reactor
        self.timeout = timeout
        self.agent = agent or Agent(reactor)
        self.clock = clock or reactor.seconds
        #: seconds between re-fetches for an unknown kid (per URL)
        self.refetch_interval = REFETCH_INTERVAL
        self._entries: dict[str, _Entry] = {}
        self._fetching: dict[str, list[defer.Deferred]] = {}

    async def key(self, url: str, kid: str) -> rsa.RSAPublicKey:
        now = self.clock()
        entry = self._entries.get(url)
        if entry is not None and now < entry.expires_at and kid in entry.keys:
            return entry.keys[kid]
        fresh = entry is not None and now < entry.expires_at
        if entry is None or not fresh or now - entry.fetched_at >= self.refetch_interval:
            try:
                entry = await self._refresh(url)
            except JwksError:
                stale = self._entries.get(url)
                if stale is not None and kid in stale.keys:
                    log.warn("JWKS {url}: using the keys of the last good fetch", url=url)
                    return stale.keys[kid]
                raise
        if kid not in entry.keys:
            raise UnknownKid(f"the platform's key set ({url}) has no RS256 signing key with "
                             f"kid {kid[:80]!r}")
        return entry.keys[kid]

    async def _refresh(self, url: str) -> _Entry:
        # concurrent launches share one fetch
        waiters = self._fetching.get(url)
        if waiters is not None:
            waiter: defer.Deferred = defer.Deferred()
            waiters.append(waiter)
            return await waiter
        self._fetching[url] = waiters = []
        try:
            entry = await self._fetch(url)
        except JwksError as e:
            del self._fetching[url]
            for waiter in waiters:
                waiter.errback(JwksError(str(e)))
            raise
        del self._fetching[url]
        for waiter in waiters:
            waiter.callback(entry)
        return entry

    async def _fetch(self, url: str) -> _Entry:
        try:
            d = self.agent.request(b"GET", url.encode("ascii"),
                                   Headers({b"accept": [b"application/json"],
                                            b"user-agent": [b"emaild LTI tool"]}))
            d.addTimeout(self.timeout, self.reactor)
            response = await d
            d = read_body(response, MAX_BODY)
            d.addTimeout(self.timeout, self.reactor)
            body = await d
        except defer.TimeoutError:
            raise JwksError(f"the platform's key set ({url}) did not answer within "
                            f"{self.timeout:.0f} s") from None
        except Exception as e:  # noqa: BLE001 (any failure to fetch is the same answer)
            raise JwksError(f"the platform's key set ({url}) could not be fetched: "
                            f"{type(e).__name__}: {str(e)[:200]}") from None
        if response.code != 200:
            raise JwksError(f"the platform's key set ({url}) answered HTTP {response.code}")
        if body is None:
            raise JwksError(f"the platform's key set ({url}) is larger than {MAX_BODY} bytes")
        try:
            keys = rsa_keys(json.loads(body))
        except (ValueError, UnicodeDecodeError):
            raise JwksError(f"the platform's key set ({url}) is not JSON") from None
        now = self.clock()
        entry = _Entry(keys, now, now + cache_lifetime(response.headers, now))
        self._entries[url] = entry
        log.info("JWKS {url}: {n} key(s), cached {ttl:.0f} s", url=url, n=len(keys),
                 ttl=entry.expires_at - now)
        return entry
