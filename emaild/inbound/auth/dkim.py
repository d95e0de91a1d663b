"""
DKIM (RFC 6376): every signature of a message, verified by dkimpy.

dkimpy's verification is synchronous and asks its C{dnsfunc} for the key.
We read each signature's C{d=} and C{s=} first, fetch every
C{<s>._domainkey.<d>} TXT record with the non-blocking resolver, and only
then let dkimpy verify, with a C{dnsfunc} that answers from what was
fetched: nothing blocks the reactor and no thread is involved.
"""

from __future__ import annotations

import logging
import re

import attrs
import dkim as dkimpy
from twisted.internet import defer

from emaild.inbound.auth.dns import Resolver, TemporaryDNSError

#: signatures beyond this many are not checked (each costs a lookup)
MAX_SIGNATURES = 5

#: a line that may start a DKIM-Signature header field (any line, so that
#: whatever dkimpy would read as one is found; a match in the body only
#: costs the full parse)
_MAYBE_SIGNED = re.compile(rb"^dkim-signature", re.I | re.M)

#: dkimpy logs every verification failure at error level; we report them
#: in the verdict instead
_quiet = logging.getLogger("emaild.inbound.dkim")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


@attrs.frozen
class DKIMResult:
    #: pass, fail, policy (l=), temperror or permerror (RFC 8601)
    result: str
    #: the signing domain (d=) and selector (s=), when readable
    domain: str = ""
    selector: str = ""
    reason: str = ""


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace").lower()


def _signature_count(message: dkimpy.DKIM) -> int:
    return sum(1 for name, _ in message.headers if name.lower() == b"dkim-signature")


def may_be_signed(raw: bytes) -> bool:
    """False when C{raw} has no DKIM-Signature header field for certain."""
    # the name anywhere, any case, first (a C-speed scan): the line-start
    # regex, which has no literal prefix to scan for, only where it is
    return b"dkim-signature" in raw.lower() and _MAYBE_SIGNED.search(raw) is not None


async def verify_all(resolver: Resolver, raw: bytes) -> list[DKIMResult]:
    """
    One result per DKIM-Signature header (top first, at most
    L{MAX_SIGNATURES}); an empty list for an unsigned message.
    """
    if not may_be_signed(raw):
        return []  # unsigned: nothing to verify, no need to parse it
    try:
        message = dkimpy.DKIM(raw, logger=_quiet)
    except Exception as e:  # dkimpy raises more than DKIMException on odd input
        return [DKIMResult("permerror", reason=f"unreadable message: {e}"[:200])]
    count = min(_signature_count(message), MAX_SIGNATURES)
    # read every signature's key name first, then fetch them all (at once)
    wanted: dict[int, tuple[str, str]] = {}
    results: dict[int, DKIMResult] = {}
    for index in range(count):
        try:
            signature, _headers, _all = message.verify_headerprep(index)
        except Exception as e:
            results[index] = DKIMResult("permerror", reason=f"bad signature: {e}"[:200])
            continue
        domain, selector = _text(signature.get(b"d")), _text(signature.get(b"s"))
        signed = {h.strip().lower() for h in signature.get(b"h", b"").split(b":")}
        if b"from" not in signed:  # RFC 6376 6.1.1 (dkimpy does not check it)
            results[index] = DKIMResult("permerror", domain, selector, "From is not signed")
            continue
        if b"l" in signature:
            # a body length limit lets anyone append to a signed message
            results[index] = DKIMResult("policy", domain, selector,
                                        "signatures with a body length limit (l=) are not "
                                        "accepted: text could be appended")
            continue
        wanted[index] = (domain, selector)
    names = sorted({f"{selector}._domainkey.{domain}" for domain, selector in wanted.values()})
    # all at once, so timeouts do not add up
    fetched = await defer.gatherResults(
        [defer.Deferred.fromCoroutine(_key(resolver, name)) for name in names])
    keys = dict(zip(names, fetched))
    for index, (domain, selector) in wanted.items():
        results[index] = _verify_one(message, index, domain, selector,
                                     keys[f"{selector}._domainkey.{domain}"])
    return [results[i] for i in range(count)]


async def _key(resolver: Resolver, name: str) -> tuple | TemporaryDNSError:
    try:
        return await resolver.lookup(name, "TXT")
    except TemporaryDNSError as e:
        return e


def _verify_one(message: dkimpy.DKIM, index: int, domain: str, selector: str,
                key) -> DKIMResult:
    if isinstance(key, TemporaryDNSError):
        return DKIMResult("temperror", domain, selector, str(key))
    records = [b"".join(strings) for strings in key]
    if not records:
        return DKIMResult("permerror", domain, selector, "no key published for this selector")

    def dnsfunc(name, timeout=5):
        # dkimpy asks for the name we fetched (with a trailing dot)
        return records[0]

    try:
        ok = message.verify(idx=index, dnsfunc=dnsfunc)
    except dkimpy.DKIMException as e:
        return DKIMResult("fail", domain, selector, str(e)[:200])
    except Exception as e:  # a key or signature dkimpy cannot even decode
        return DKIMResult("permerror", domain, selector, f"cannot verify: {e!r}"[:200])
    if ok:
        return DKIMResult("pass", domain, selector)
    return DKIMResult("fail", domain, selector, "signature does not verify")
