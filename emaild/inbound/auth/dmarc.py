"""
DMARC (RFC 7489) for the From domain: the policy record and identifier
alignment.

The record is the TXT at C{_dmarc.<From domain>}, else at
C{_dmarc.<organizational domain>} (found with the Public Suffix List that the
C{publicsuffixlist} package ships, so nothing is downloaded), where C{sp=}
applies when present.  Relaxed alignment (the default, C{adkim=r},
C{aspf=r}) compares organizational domains, strict the exact names.  C{pct}
is treated as 100: a policy applies to every failing message.

Only the policy part is used; reporting (C{rua}, C{ruf}) is not.
"""

from __future__ import annotations

import functools

import attrs
from publicsuffixlist import PublicSuffixList

from emaild.inbound.auth.dkim import DKIMResult
from emaild.inbound.auth.dns import DNSLookup, TemporaryDNSError
from emaild.inbound.auth.spf import SPFResult

POLICIES = ("none", "quarantine", "reject")


@functools.cache
def public_suffixes() -> PublicSuffixList:
    """
    The copy of the list shipped with the package, read once (about 0.1 s
    of CPU: L{emaild.inbound.auth.verdict.Authenticator} reads it when it
    is built, so that the first post does not hold the reactor that long).
    """
    return PublicSuffixList()


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """
    The registrable domain (RFC 7489 section 3.2): C{mail.example.co.uk}
    gives C{example.co.uk}; a public suffix itself is returned as it is.
    (Remembered: the list is the package's copy, fixed while we run.)
    """
    domain = domain.rstrip(".").lower()
    return public_suffixes().privatesuffix(domain) or domain


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    identifier, from_domain = identifier.rstrip(".").lower(), from_domain.rstrip(".").lower()
    if not identifier or not from_domain:
        return False
    if mode == "s":
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


@attrs.frozen
class Record:
    policy: str
    subdomain_policy: str | None = None
    adkim: str = "r"
    aspf: str = "r"


def parse_record(text: str) -> Record | None:
    """
    A C{v=DMARC1} record, or None if it is not one (RFC 7489 section 6.3:
    a record whose p= is missing or invalid is ignored, unless rua= makes
    it a "p=none" record).
    """
    tags = {}
    parts = text.split(";")
    first, _, version = parts[0].partition("=")
    if first.strip() != "v" or version.strip() != "DMARC1":
        return None  # v=DMARC1 must come first
    for part in parts[1:]:
        name, sep, value = part.partition("=")
        if sep:
            tags.setdefault(name.strip().lower(), value.strip())
    policy = tags.get("p", "").lower()
    if policy not in POLICIES:
        if "rua" not in tags:
            return None
        policy = "none"
    sp = tags.get("sp", "").lower()
    adkim, aspf = tags.get("adkim", "r").lower(), tags.get("aspf", "r").lower()
    return Record(policy, sp if sp in POLICIES else None,
                  adkim if adkim in ("r", "s") else "r", aspf if aspf in ("r", "s") else "r")


@attrs.frozen
class Policy:
    """What the From domain publishes, and where it was found."""

    #: None: no DMARC record
    record: Record | None
    #: the domain whose _dmarc record it is
    domain: str = ""

    def applied(self, from_domain: str) -> str:
        """The p= (or, for a subdomain of the record's domain, sp=) that applies."""
        if self.record is None:
            return "none"
        if from_domain != self.domain and self.record.subdomain_policy:
            return self.record.subdomain_policy
        return self.record.policy


async def _records(resolver: DNSLookup, domain: str) -> list[Record]:
    found = []
    for strings in await resolver.lookup(f"_dmarc.{domain}", "TXT"):
        text = b"".join(strings).decode("utf-8", "replace")
        record = parse_record(text)
        if record is not None:
            found.append(record)
    return found


async def fetch_policy(resolver: DNSLookup, from_domain: str) -> Policy:
    """
    @raise TemporaryDNSError: the record cannot be known now.
    """
    from_domain = from_domain.lower()
    for domain in dict.fromkeys([from_domain, organizational_domain(from_domain)]):
        records = await _records(resolver, domain)
        if len(records) == 1:
            return Policy(records[0], domain)
        if len(records) > 1:  # RFC 7489 6.6.3: more than one record means none
            return Policy(None, domain)
    return Policy(None, "")


@attrs.frozen
class DMARCResult:
    #: pass, fail, none (no record), temperror
    result: str
    from_domain: str
    #: the policy that applies to this From domain: none, quarantine, reject
    policy: str = "none"
    #: SPF or DKIM passed aligned with the From domain (also without a record)
    aligned_pass: bool = False
    #: an aligned identifier could not be checked now
    temporary: bool = False


def evaluate(from_domain: str, policy: Policy | TemporaryDNSError, spf: SPFResult,
             signatures: list[DKIMResult]) -> DMARCResult:
    """
    Alignment of the SPF (envelope sender) and DKIM results with the From
    domain under the record's modes (relaxed without a record).
    """
    record = policy.record if isinstance(policy, Policy) else None
    adkim, aspf = (record.adkim, record.aspf) if record else ("r", "r")
    spf_aligned = aligned(spf.domain, from_domain, aspf)
    dkim_aligned = [s for s in signatures if aligned(s.domain, from_domain, adkim)]
    passed = (spf_aligned and spf.result == "pass") or any(
        s.result == "pass" for s in dkim_aligned)
    temporary = isinstance(policy, TemporaryDNSError) or (
        spf_aligned and spf.result == "temperror") or any(
        s.result == "temperror" for s in dkim_aligned)
    if isinstance(policy, TemporaryDNSError):
        return DMARCResult("temperror", from_domain, "none", passed, not passed)
    applied = policy.applied(from_domain)
    if record is None:
        return DMARCResult("none", from_domain, "none", passed, temporary and not passed)
    if passed:
        return DMARCResult("pass", from_domain, applied, True)
    if temporary:
        return DMARCResult("temperror", from_domain, applied, False, True)
    return DMARCResult("fail", from_domain, applied)
