"""
The verdict on one received post: SPF for the envelope sender and the HELO
name, every DKIM signature, DMARC for the From domain, as an RFC 8601
C{Authentication-Results} value; and what the relay does with it
(L{decide}).

    authenticator = Authenticator(resolver, "relay.example.org")
    verdict = await authenticator.authenticate(peer=..., helo=..., mail_from=...,
                                               raw=raw, from_domain="example.org")
    decision = decide(verdict, config["groups"]["unauthenticated"])

Policy, in this order:
  - SPF or DKIM passes aligned with the From domain (DMARC's test): relay;
  - otherwise, anything that matters could not be looked up (DNS timeout,
    SERVFAIL): C{451 4.7.0}, try again later;
  - otherwise, the From domain publishes C{p=reject} or C{p=quarantine}:
    C{550 5.7.1}, refused before 250, never bounced later;
  - otherwise C{[groups] unauthenticated}: C{hold} (ask the member),
    C{refuse} (C{550 5.7.1}) or C{relay} (unsafe: anyone can post as a member).
"""

from __future__ import annotations

import functools
import re

import attrs
from twisted.internet import defer

from emaild.inbound.auth import dkim, dmarc, spf
from emaild.inbound.auth.dns import CACHE_SIZE, Recording, Resolver, ResultCache, TemporaryDNSError

RELAY, HOLD, REFUSE, RETRY = "relay", "hold", "refuse", "retry"

_UNSAFE = re.compile(r"[^\x21-\x7e]|[;()\"\\]")


@functools.lru_cache(maxsize=1024)  # the same few names in every post's verdict
def _clean(value: str) -> str:
    # header-safe: no spaces, controls, comments or quotes from the sender
    return _UNSAFE.sub("?", value)[:200]


@attrs.frozen
class Verdict:
    from_domain: str
    spf: spf.SPFResult
    helo: spf.SPFResult | None
    dkim: tuple[dkim.DKIMResult, ...]
    dmarc: dmarc.DMARCResult
    mail_from: str = ""

    @property
    def authenticated(self) -> bool:
        return self.dmarc.aligned_pass

    @property
    def temporary(self) -> bool:
        return self.dmarc.temporary

    def header(self, authserv_id: str) -> str:
        """
        The C{Authentication-Results} value (RFC 8601), e.g.
        C{relay.example.org; spf=pass smtp.mailfrom=ada@example.org;
        dkim=pass header.d=example.org header.s=sel; dmarc=pass
        policy.published-domain-policy=reject header.from=example.org}.
        """
        parts = [_clean(authserv_id)]
        if self.mail_from:
            parts.append(f"spf={self.spf.result} smtp.mailfrom={_clean(self.mail_from)}")
        if self.helo is not None:
            parts.append(f"spf={self.helo.result} smtp.helo={_clean(self.helo.domain)}")
        if not self.dkim:
            parts.append("dkim=none")
        for signature in self.dkim:
            text = f"dkim={signature.result}"
            if signature.domain:
                text += f" header.d={_clean(signature.domain)}"
            if signature.selector:
                text += f" header.s={_clean(signature.selector)}"
            parts.append(text)
        parts.append(f"dmarc={self.dmarc.result}"
                     + (f" policy.published-domain-policy={self.dmarc.policy}"
                        if self.dmarc.result != "none" else "")
                     + f" header.from={_clean(self.from_domain)}")
        return "; ".join(parts)


class Authenticator:
    """
    @param cache_size: SPF results and DMARC policies remembered (each
        until the earliest DNS answer it was made from expires, so a
        remembered result is the one the cached answers would give again).
    """

    def __init__(self, resolver: Resolver, cache_size: int = CACHE_SIZE):
        self.resolver = resolver
        self.results = ResultCache(resolver.reactor, cache_size)
        dmarc.public_suffixes()  # read now, not while the first post waits

    async def authenticate(self, *, peer: str, helo: str, mail_from: str, raw: bytes,
                           from_domain: str) -> Verdict:
        """
        Every check at once (their lookups run concurrently).  SPF results
        (per client address, HELO name and sender) and DMARC policies (per
        From domain) are remembered for as long as the DNS answers they
        were made from; DKIM is verified for every message.
        """
        helo_key, mail_key = ("helo", peer, helo), ("mailfrom", peer, mail_from, helo)
        policy_key = ("dmarc", from_domain.lower())
        helo_result = self.results.get(helo_key)
        mail_result = self.results.get(mail_key)
        published = self.results.get(policy_key)
        signed = dkim.may_be_signed(raw)
        if helo_result is None or mail_result is None or published is None or signed:
            helo_result, mail_result, dkim_results, published = await defer.gatherResults([
                _start(self._spf(helo_key, helo_result, peer, "", helo)),
                # the null sender: SPF's (and DMARC's) identity is the HELO name
                _start(self._spf(mail_key, mail_result, peer, mail_from, helo)),
                _start(dkim.verify_all(self.resolver, raw)),
                _start(self._policy(policy_key, published, from_domain))], consumeErrors=True)
        else:
            dkim_results = []
        result = dmarc.evaluate(from_domain, published, mail_result, dkim_results)
        return Verdict(from_domain, mail_result, helo_result if mail_from else None,
                       tuple(dkim_results), result, mail_from)

    async def _spf(self, key, known, peer: str, mail_from: str, helo: str) -> spf.SPFResult:
        if known is not None:
            return known
        recording = Recording(self.resolver)
        result = await spf.check_host(recording, peer, mail_from, helo)
        self.results.put(key, recording.expires, result)
        return result

    async def _policy(self, key, known, from_domain: str):
        if known is not None:
            return known
        recording = Recording(self.resolver)
        try:
            policy = await dmarc.fetch_policy(recording, from_domain)
        except TemporaryDNSError as e:
            return e
        self.results.put(key, recording.expires, policy)
        return policy


def _start(coroutine) -> defer.Deferred:
    return defer.Deferred.fromCoroutine(coroutine)


@attrs.frozen
class Decision:
    #: relay, hold, refuse or retry
    action: str
    #: for refuse/retry: the SMTP reply (code, enhanced status, text)
    reply: tuple[int, str, str] | None = None


def decide(verdict: Verdict, unauthenticated: str) -> Decision:
    """
    What the relay does with a post (see the module docstring).
    """
    domain = _clean(verdict.from_domain)
    if verdict.authenticated:
        return Decision(RELAY)
    if verdict.temporary:
        text = f"cannot verify the sender's domain {domain} right now (DNS); please try again later"
        return Decision(RETRY, (451, "4.7.0", text))
    if verdict.dmarc.policy in ("reject", "quarantine"):
        text = (f"{domain} publishes DMARC p={verdict.dmarc.policy} and this message fails it: "
                "neither SPF nor DKIM passes aligned with the From domain")
        return Decision(REFUSE, (550, "5.7.1", text))
    if unauthenticated == REFUSE:
        text = (f"the group only relays posts that {domain} vouches for (SPF or DKIM aligned "
                "with From); this one it does not")
        return Decision(REFUSE, (550, "5.7.1", text))
    if unauthenticated == RELAY:
        return Decision(RELAY)
    return Decision(HOLD)
