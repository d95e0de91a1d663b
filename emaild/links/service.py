"""
Minting and resolving links: what code that composes mail calls.

    url = await links.login_url(person_id, "/home")
    resolution = await links.resolve(token, now)

A login link's target must be a path on this site or a URL on an origin in
C{[web] allowed_origins}; anything else is refused when the link is minted,
so a redirect from C{/email/<token>} can never be made to go elsewhere.
"""

from __future__ import annotations

import re
import time
from typing import Sequence
from urllib.parse import unquote, urlsplit

import attrs

from emaild.links.clicks import AlsoMany, ClickBatcher
from emaild.links.store import LinkRequest, LinkRow, LinkStore
from emaild.links.tokens import TokenCodec, TokenParts

LOGIN = "login"
UNSUBSCRIBE = "unsubscribe"
#: "Did you send this?" about a held group post (emaild.inbound.holds)
HOLD = "hold"
PURPOSES = (LOGIN, UNSUBSCRIBE, HOLD)

#: URL paths the links are served under, per purpose
ROUTES = {LOGIN: "email", UNSUBSCRIBE: "unsubscribe", HOLD: "hold"}

#: a token's numbers must fit PostgreSQL's bigint (a crafted canonical token
#: can carry any number; it names no row, and must not fail a batch's cast)
_MAX_BIGINT = 2**63 - 1

_SAFE_PATH = re.compile(r"^/[A-Za-z0-9\-._~!$&'()*+,;=:@%/?#]*$")


class LinkError(ValueError):
    """
    The link cannot be minted; the message says why (e.g. a target that
    would redirect off the site).
    """


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_target(target: str, site_origin: str, allowed_origins: Sequence[str]) -> str:
    """
    Return C{target} if a login link may redirect there, else raise
    L{LinkError}.  Accepted: a path on this site (C{/groups/3?x=1}), or an
    absolute http(s) URL whose origin is this site's or an allowed one.
    Refused: C{//evil}, C{/\\evil}, C{https:evil}, schemes other than
    http(s), user info, control characters and whitespace, and encoded forms
    of any of these (C{/%2F%2Fevil}, C{%5C}).
    """
    if not isinstance(target, str) or not target:
        raise LinkError("a login link needs a target path such as /home")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in target) or "\\" in target:
        raise LinkError(f"target {target!r} contains whitespace, control characters or backslashes")
    decoded = target
    for _ in range(3):  # percent-decoding twice more catches double-encoding
        decoded = unquote(decoded)
    if "\\" in decoded or any(ord(c) < 0x21 for c in decoded):
        raise LinkError(f"target {target!r} hides backslashes or control characters in %-escapes")
    if target.startswith("/"):
        if target.startswith("//") or decoded.startswith("//") or not _SAFE_PATH.match(target):
            raise LinkError(f"target {target!r} is not a path on this site")
        return target
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.netloc or not target.lower().startswith(
            parts.scheme + "://"):
        raise LinkError(f"target {target!r} is neither a path on this site nor an http(s) URL")
    if "@" in parts.netloc:
        raise LinkError(f"target {target!r} has user info in its host")
    origin = _origin(target)
    if origin != site_origin and origin not in allowed_origins:
        raise LinkError(f"target {target!r} is on {origin}, which is not in [web] allowed_origins")
    return target


@attrs.frozen
class Resolution:
    #: "ok", "expired" or "unknown"
    status: str
    link: LinkRow | None = None


def _is_of(link: LinkRow | None, parts: TokenParts, purpose: str) -> bool:
    """
    Whether C{link} is the row a token with C{parts} names, for C{purpose}.
    """
    return link is not None and link.purpose == purpose and (
        link.secret_hi, link.secret_lo) == (parts.secret_hi, parts.secret_lo)


class Links:
    def __init__(self, config, store: LinkStore, codec: TokenCodec | None = None, clock=time.time,
                 reactor=None):
        self.store = store
        self.codec = codec or TokenCodec(config["links"]["salt"])
        self.public_url = config["http"]["public_url"]
        self.site_origin = _origin(self.public_url)
        self.allowed_origins = tuple(config["web"]["allowed_origins"])
        self.ttl = {LOGIN: config["links"]["login_ttl"],
                    UNSUBSCRIBE: config["links"]["unsubscribe_ttl"],
                    HOLD: config["links"]["hold_ttl"]}
        self.clock = clock
        #: where clicks' statements are scheduled (default: the global reactor)
        self.reactor = reactor
        self._batchers: dict[tuple[str, AlsoMany | None, bool], ClickBatcher] = {}

    # -- minting -----------------------------------------------------------
    def request(self, person_id: int, purpose: str, target: str) -> LinkRequest:
        """
        Validate and describe a link to mint (see L{mint_many}).
        """
        if purpose not in PURPOSES:
            raise LinkError(f"unknown link purpose {purpose!r}; known: {', '.join(PURPOSES)}")
        if person_id is None:
            raise LinkError("a link needs the person it is for")
        if purpose == LOGIN:
            target = check_target(target, self.site_origin, self.allowed_origins)
        return LinkRequest(int(person_id), purpose, str(target), self.ttl[purpose])

    def url(self, link: LinkRow) -> str:
        return self.url_and_token(link)[0]

    def token(self, link: LinkRow) -> str:
        return self.codec.encode(link.parts)

    def url_and_token(self, link: LinkRow) -> tuple[str, str]:
        """C{(self.url(link), self.token(link))}, the token encoded once."""
        token = self.codec.encode(link.parts)
        return f"{self.public_url}/{ROUTES[link.purpose]}/{token}", token

    async def mint_many(self, requests: Sequence[LinkRequest]) -> list[LinkRow]:
        return await self.store.mint_many(requests, self.clock())

    async def mint(self, person_id: int, purpose: str, target: str) -> str:
        (link,) = await self.mint_many([self.request(person_id, purpose, target)])
        return self.url(link)

    async def login_url(self, person_id: int, target: str = "/home") -> str:
        return await self.mint(person_id, LOGIN, target)

    # -- resolving -----------------------------------------------------------
    async def resolve(self, token: str, purpose: str) -> Resolution:
        """
        Look a token up: C{unknown} for anything that is not exactly the
        token of a row of this purpose with this secret, C{expired} for a
        real but expired one.
        """
        parts = self.codec.decode(token)
        if parts is None:
            return Resolution("unknown")
        link = await self.store.get(parts.link_id)
        if not _is_of(link, parts, purpose):
            return Resolution("unknown")
        if link.expires_at <= self.clock():
            return Resolution("expired", link)
        return Resolution("ok", link)

    async def use_batched(self, token: str, purpose: str, value=None,
                          also_many: AlsoMany | None = None,
                          durable: bool = True) -> Resolution:
        """
        L{resolve} and, if the link is C{ok}, count a use, in one statement
        with the other clicks of this purpose that arrive while one is in
        flight (L{ClickBatcher}, L{LinkStore.use_many}): C{also_many} makes
        the batch's CTEs from every click's C{value}, and they run for a
        click exactly when its answer is C{ok}.  C{durable=False}: the
        statement's commit does not wait for the disk (L{LinkStore.use_many}).
        """
        parts = self.codec.decode(token)
        if parts is None or max(parts.link_id, parts.secret_hi, parts.secret_lo) > _MAX_BIGINT:
            return Resolution("unknown")
        batcher = self._batchers.get((purpose, also_many, durable))
        if batcher is None:
            batcher = self._batchers[purpose, also_many, durable] = ClickBatcher(
                self.store, purpose, also_many, clock=self.clock, reactor=self.reactor,
                durable=durable)
        link, used = await batcher.use(parts, value)
        if used:
            return Resolution("ok", link)
        if not _is_of(link, parts, purpose):
            return Resolution("unknown")
        return Resolution("expired", link)

    def redirect_location(self, link: LinkRow) -> str:
        """
        Where a login link lands: its target, made absolute on this site.
        """
        if link.target.startswith("/"):
            return self.public_url + link.target
        return link.target
