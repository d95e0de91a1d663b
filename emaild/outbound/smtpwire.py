"""
The SMTP client's pure parts, kept apart from the protocol so they can be
used and tested without a connection: replies, one message's transaction,
what a reply means for a message, the EHLO keywords, the message data as it
goes on the wire, and the envelope address check that keeps commands from
being smuggled in.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from emaild.outbound.transport import DeliveryResult, Outcome

#: bytes a relay's reply may not hand on: PostgreSQL cannot store NUL, and
#: the others would forge lines in logs and in `emaild queue show`
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def reply_text(raw: bytes) -> str:
    """A reply line's text as it may be stored and logged."""
    text = raw.decode("utf-8", "replace")
    return _CONTROL.sub("?", text) if _CONTROL.search(text) else text


class Reply(NamedTuple):
    #: None when no reply came (connection lost, timeout); text says why
    code: int | None
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return self.text if self.code is None else f"{self.code} {self.text}"


class SessionFailed(Exception):
    """The session could not be set up; C{result} is for the messages it had."""

    def __init__(self, result: DeliveryResult):
        super().__init__(result.reply)
        self.result = result


def retry(reply: str, code: int | None = None) -> DeliveryResult:
    return DeliveryResult(Outcome.RETRY, code, reply)


def prepare_data(data: bytes) -> bytes:
    """
    Turn a message into what goes on the wire after DATA: every line ending
    (CRLF, LF or lone CR) becomes CRLF, every line starting with "." gets
    another "." (RFC 5321 4.5.2), the data ends with CRLF, then ".\\r\\n".
    Done over the whole message at once so no chunk boundary can hide a ".".
    """
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    data = data.replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class Transaction:
    """One message on its way through MAIL, RCPT, DATA and the data."""

    __slots__ = ("message", "finish", "data", "rcpt", "result", "done")

    def __init__(self, message, finish, data: bytes, rcpt: bytes):
        self.message = message
        #: called once with the message's L{DeliveryResult}
        self.finish = finish
        #: what goes on the wire after the 354 (None once written)
        self.data: bytes | None = data
        self.rcpt = rcpt
        #: the outcome decided by a refusal before the data, if any
        self.result: DeliveryResult | None = None
        self.done = False


def end_of_data_result(reply: Reply) -> tuple[DeliveryResult, bool]:
    """
    The message's outcome from the reply to its data, and whether the
    session must end (no reply, or 421).
    """
    if reply.code is None:
        return retry(reply.text), True
    return (DeliveryResult(classify(reply.code, reply.text), reply.code, reply.text),
            reply.code == 421)


def refusal_result(step: str, reply: Reply) -> tuple[DeliveryResult, bool]:
    """
    The message's outcome from a refusal of MAIL, RCPT or DATA, and whether
    the session must end: 421 closes it, and a 2xx/3xx here (or no reply)
    means we lost track of it.
    """
    if reply.code is None:
        return retry(reply.text), True
    outcome = classify(reply.code, reply.text)
    if reply.code == 421 or outcome is Outcome.SENT or not 400 <= reply.code < 600:
        return DeliveryResult(Outcome.RETRY, reply.code, f"{step}: {reply}"), True
    return DeliveryResult(outcome, reply.code, f"{step}: {reply}"), False


def parse_ehlo(reply: Reply) -> dict[str, str]:
    """The extensions a 250 reply to EHLO offers: {KEYWORD: parameters}."""
    extensions = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.strip().partition(" ")
        keyword, eq, legacy = keyword.partition("=")  # old "AUTH=LOGIN" form
        extensions[keyword.upper()] = (legacy + " " + params).strip() if eq else params
    return extensions


def classify(code: int, text: str) -> Outcome:
    """What a relay's reply means for the message (SES wording for 454)."""
    if 200 <= code < 300:
        return Outcome.SENT
    lowered = text.lower()
    if code == 454 and "throttling failure" in lowered and "daily message quota exceeded" in lowered:
        return Outcome.QUOTA
    if code == 454 and ("throttling" in lowered or "rate exceeded" in lowered):
        return Outcome.THROTTLED
    if 500 <= code < 600:
        return Outcome.FAILED
    return Outcome.RETRY  # 4xx, and codes that make no sense here


_UNSAFE = re.compile(r"[\s<>\x00-\x1f\x7f]")


def address_problem(address: str, role: str) -> str | None:
    """Why C{address} must not go into MAIL/RCPT (command injection), or None."""
    if not isinstance(address, str):
        return f"{role} address {address!r} is not a string"
    if _UNSAFE.search(address):
        return (f"refusing {role} address {address!r}: it contains whitespace, "
                "a control character, '<' or '>'")
    if not address.isascii():
        return f"refusing {role} address {address!r}: not ASCII (no SMTPUTF8 support)"
    if role == "recipient" and "@" not in address:
        return f"refusing recipient address {address!r}: no domain"
    return None
