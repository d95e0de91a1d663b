"""
Read bounces: RFC 3464 delivery status notifications, and a best-effort
fallback for MTAs that send free text (old Exim, Gmail's and Exchange's
human-readable notices, qmail).

The processor only acts on C{hard} reports (stop mailing that member), so
the fallback is conservative: it needs an SMTP or enhanced status code, or
wording that says the failure is permanent, before it reports anything.
"""

from __future__ import annotations

import codecs
import re

import attrs

from emaild.inbound.classify import content_type, parse_message


@attrs.frozen
class BounceReport:
    #: the address that failed (Original-Recipient preferred: that is what we sent to)
    recipient: str | None
    action: str
    status: str
    diagnostic: str
    hard: bool


_FIELD = re.compile(r"^([A-Za-z0-9-]+)[ \t]*:[ \t]*(.*)$")
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_AND_STATUS = re.compile(r"\b([245]\d\d)[ -]+#?([245]\.\d{1,3}\.\d{1,3})\b")
_SMTP_CODE = re.compile(r"(?:^|[\s:(])([45]\d\d)[ -](?=\S)", re.MULTILINE)
_ADDRESS = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"
_BOUNCE_WORDS = re.compile(
    r"undeliver|could not be delivered|delivery (?:has )?failed|failed permanently|"
    r"permanent (?:error|failure|fatal)|returned mail|failure notice|delivery status|"
    r"address(?:es)? failed|mail delivery (?:system|subsystem|failed)|not be delivered|"
    r"rejected|user unknown|does not exist|no such user|mailbox unavailable",
    re.IGNORECASE)
_PERMANENT_WORDS = re.compile(r"permanent(?:ly)?|failed permanently|address(?:es)? failed",
                              re.IGNORECASE)
#: where free-text bounces name the failed address
_FAILED_ADDRESS = [
    re.compile(r"RCPT TO:\s*<(" + _ADDRESS + r")>", re.IGNORECASE),
    # Postfix-style "<bob@example.net>: host mx said: 550 ..." and qmail's "<bob@...>:"
    re.compile(r"^\s*<(" + _ADDRESS + r")>:", re.MULTILINE),
    # Exim and Gmail: the address alone on an indented line after the explanation
    re.compile(r"(?:failed|recipients?|permanently|delivered to)[^\n]*:\s*\n(?:[ \t]*\n)*[ \t]*<?("
               + _ADDRESS + r")>?[ \t]*$", re.IGNORECASE | re.MULTILINE),
    re.compile(r"(?:delivery to|delivered to|failed to deliver to)\s+<?("
               + _ADDRESS + r")>?", re.IGNORECASE),
]


def _fields(text: str) -> list[dict[str, str]]:
    """
    The blocks of a message/delivery-status body (header-like fields,
    blocks separated by blank lines), field names lower-cased.
    """
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = None
    for line in re.split(r"\r\n|\r|\n", text):
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, None
        elif line[0] in " \t" and last is not None:
            current[last] += " " + line.strip()
        else:
            m = _FIELD.match(line)
            if m:
                last = m.group(1).lower()
                current.setdefault(last, m.group(2).strip())
    if current:
        blocks.append(current)
    return blocks


def _status_text(part) -> str:
    payload = getattr(part, "_payload", None)  # get_payload() raises on some charset names
    if isinstance(payload, list):
        # the parser splits message/delivery-status into one Message per block
        return "\n".join(
            "".join(f"{k}: {v}\n" for k, v in block.raw_items()) for block in payload
            if hasattr(block, "raw_items"))
    try:
        data = part.get_payload(decode=True) or b""
    except Exception:
        data = str(payload or "").encode("utf-8", "surrogateescape")
    return data.decode("utf-8", "replace")


def _address(value: str | None) -> str | None:
    if not value:
        return None
    kind, _, address = value.partition(";")
    address = (address if _ else kind).strip().strip("<>").strip()
    return address or None


def _one_line(text: str, limit: int = 500) -> str:
    return re.sub(r"\s+", " ", text).strip()[:limit]


def _report(block: dict[str, str]) -> BounceReport:
    action = (block.get("action", "").split() or [""])[0].lower()
    diagnostic = block.get("diagnostic-code", "")
    _, semi, rest = diagnostic.partition(";")
    diagnostic = _one_line(rest if semi else diagnostic)
    m = _STATUS.search(block.get("status", "")) or _STATUS.search(diagnostic)
    status = m.group(0) if m else ""
    if not status and action == "failed":
        code = _SMTP_CODE.search(diagnostic)
        if code:
            status = f"{code.group(1)[0]}.0.0"
    recipient = (_address(block.get("original-recipient"))
                 or _address(block.get("final-recipient")))
    return BounceReport(recipient, action, status, diagnostic,
                        hard=action == "failed" and status.startswith("5"))


def _text_of(message) -> str:
    texts = []
    for part in message.walk():
        if part.is_multipart():
            continue
        kind = content_type(part)
        if kind.startswith("text/") or kind.startswith("message/"):
            try:
                data = part.get_payload(decode=True) or b""
            except Exception:
                data = str(part.get_payload()).encode("utf-8", "surrogateescape")
            text = data.decode(part.get_content_charset() or "utf-8", "replace") \
                if _known_charset(part.get_content_charset()) else data.decode("utf-8", "replace")
            if kind == "text/html":
                text = re.sub(r"<[^>]*>", " ", text)
            texts.append(text)
            if kind in ("message/rfc822", "text/rfc822-headers"):
                break  # what follows is the returned original, not the notice
    return "\n".join(texts)


def _known_charset(name: str | None) -> bool:
    try:
        return bool(name) and bool(codecs.lookup(name))
    except (LookupError, ValueError):
        return False


def _worst(matches, group: int):
    # an SMTP transcript can hold "250 2.1.0 Ok" before the "550 5.1.1" that matters
    found = list(matches)
    for cls in "542":
        for m in found:
            if m.group(group).startswith(cls):
                return m
    return None


def _fallback(message) -> list[BounceReport]:
    text = _text_of(message)
    # only the notice, not the returned original with its own addresses
    text = re.split(r"^-+\s*(?:Original message|This is a copy of the message|"
                    r"Below this line is a copy)", text, maxsplit=1,
                    flags=re.IGNORECASE | re.MULTILINE)[0]
    if not _BOUNCE_WORDS.search(text):
        return []
    m = _worst(_SMTP_AND_STATUS.finditer(text), 2)
    status = m.group(2) if m else ""
    position = m.start() if m else -1
    if not m:
        s = _worst(_STATUS.finditer(text), 0)
        code = _worst(_SMTP_CODE.finditer(text), 1)
        if s:
            status, position = s.group(0), s.start()
        elif code:
            status, position = f"{code.group(1)[0]}.0.0", code.start()
        elif _PERMANENT_WORDS.search(text):
            status = "5.0.0"
    if not status:
        return []
    if position >= 0:
        start = text.rfind("\n", 0, position) + 1
        end = text.find("\n", position)
        diagnostic = _one_line(text[start:end if end >= 0 else None])
    else:
        diagnostic = _one_line(_PERMANENT_WORDS.search(text).group(0))
    # Exim names them in a header too
    addresses = [a.strip() for v in message.get_all("X-Failed-Recipients") or () for a in str(v).split(",")
                 if re.fullmatch(_ADDRESS, a.strip())]
    for pattern in _FAILED_ADDRESS:
        for found in pattern.findall(text):
            if found.lower() not in (a.lower() for a in addresses):
                addresses.append(found)
    action = {"5": "failed", "4": "delayed"}.get(status[0], "delivered")
    hard = status.startswith("5")
    return [BounceReport(a, action, status, diagnostic, hard) for a in addresses] or \
        [BounceReport(None, action, status, diagnostic, hard)]


def parse_bounce(raw: bytes) -> list[BounceReport]:
    """
    One report per failed (or delayed, or delivered) recipient; [] when
    C{raw} is not recognisably a bounce.  Never raises.
    """
    try:
        message = parse_message(raw)
        reports = []
        for part in message.walk():
            if content_type(part) in ("message/delivery-status", "message/global-delivery-status"):
                for block in _fields(_status_text(part)):
                    if "action" in block or "final-recipient" in block:
                        reports.append(_report(block))
        return reports or _fallback(message)
    except Exception:
        return []
