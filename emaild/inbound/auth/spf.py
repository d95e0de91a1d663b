"""
SPF (RFC 7208) for the envelope sender and the HELO name, evaluated by pyspf
(module C{spf}, the implementation behind most Python MTAs' SPF checks) over
our non-blocking resolver.

Why this way: pyspf has no asynchronous DNS hook.  Its lookups all go through
C{spf.query.dns()} (it otherwise calls a module-global, blocking
C{DNSLookup}), so we subclass C{query} and answer C{dns()} only from what has
already been fetched.  A name not fetched yet stops the evaluation with
L{_NeedLookup}; we fetch it with twisted.names and evaluate again from the
start.  Evaluation is pure computation (microseconds) and RFC 7208's limits
(10 DNS mechanisms, 2 void lookups, 10 MX/PTR names), which pyspf enforces,
bound the number of rounds, so the reactor never waits and no thread (with
its own blocking DNS) is needed.  Timeouts, SERVFAIL and the like become
pyspf's C{TempError}, i.e. C{temperror}.
"""

from __future__ import annotations

import ipaddress

import attrs
import spf as pyspf

from emaild.inbound.auth.dns import DNSLookup, TemporaryDNSError

#: more rounds than RFC 7208's limits allow lookups; a safety net
MAX_ROUNDS = 60


@attrs.frozen
class SPFResult:
    #: pass, fail, softfail, neutral, none, temperror or permerror
    result: str
    #: the domain checked (the envelope sender's, or the HELO name)
    domain: str
    #: "mailfrom" or "helo"
    identity: str
    explanation: str = ""


class _NeedLookup(BaseException):
    # BaseException: pyspf catches Exception (and TempError/PermError) on
    # the way up; this must reach check_host
    def __init__(self, key):
        super().__init__(key)
        self.key = key


class _Query(pyspf.query):
    def __init__(self, answers: dict, **kwargs):
        super().__init__(**kwargs)
        self.answers = answers

    def dns(self, name, qtype, cnames=None, ignore_void=False):
        name = str(name).rstrip(".").lower()
        if not name or not all(0 < len(label) < 64 for label in name.split(".")):
            return []
        key = (name, qtype)
        if key not in self.answers:
            raise _NeedLookup(key)
        answer = self.answers[key]
        if isinstance(answer, TemporaryDNSError):
            raise pyspf.TempError(f"DNS {answer}")
        result = list(answer)
        if not result and not ignore_void:  # as pyspf's own dns() counts them
            self.void_lookups += 1
            if self.void_lookups > pyspf.MAX_VOID_LOOKUPS:
                raise pyspf.PermError(f"Void lookup limit of {pyspf.MAX_VOID_LOOKUPS} exceeded")
        return result


def _is_domain(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
        return False
    except ValueError:
        return "." in name


async def check_host(resolver: DNSLookup, ip: str, sender: str, helo: str) -> SPFResult:
    """
    The SPF result for mail from C{sender} (the MAIL FROM address; "" for
    the null sender, when the HELO name is checked instead) sent by C{ip}.
    """
    identity = "mailfrom" if sender else "helo"
    domain = sender.rpartition("@")[2].lower() if sender else helo.lower()
    if not domain or not _is_domain(domain):
        return SPFResult("none", domain, identity, "no domain to check")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return SPFResult("none", domain, identity, f"no IP address for the client ({ip!r})")
    answers: dict = {}
    for _ in range(MAX_ROUNDS):
        try:
            query = _Query(answers, i=ip, s=sender, h=helo, strict=True)
            result, _code, explanation = query.check()
        except _NeedLookup as need:
            name, qtype = need.key
            try:
                answers[need.key] = await resolver.lookup(name, qtype)
            except TemporaryDNSError as e:
                answers[need.key] = e
            continue
        except Exception as e:  # pyspf choking on what a sender published
            return SPFResult("permerror", domain, identity, f"cannot evaluate: {e!r}"[:200])
        return SPFResult(result, domain, identity, explanation)
    return SPFResult("permerror", domain, identity, "too many DNS lookups")


async def check_helo(resolver: DNSLookup, ip: str, helo: str) -> SPFResult:
    """
    The SPF result for the HELO identity (RFC 7208 section 2.3).
    """
    return await check_host(resolver, ip, "", helo)
