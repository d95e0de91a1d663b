"""
The syntax of SMTP commands as the inbound server reads them: every field
of the envelope (HELO name, paths in MAIL and RCPT, their parameters) is
checked when it arrives, so that nothing the store cannot hold is ever
answered 250, and text is made safe for replies and headers.

What is refused, and how (L{FieldError} carries the reply):
  - a control character (C0, including NUL and TAB, or DEL) anywhere in a
    command line: C{501 5.5.2 ... contains a control character};
  - bytes that are not UTF-8: C{501 5.5.2 ... is not valid UTF-8};
  - a HELO/EHLO name that is not printable ASCII, or longer than a domain
    (255): C{501 5.5.2};
  - a non-ASCII address: C{553 5.6.7} (SMTPUTF8 is not offered, so there is
    no way to send one; the relay's outbound side would have to carry it);
  - a local part over 64, a domain over 255, a path over 256 octets
    (RFC 5321 4.5.3.1): C{501 5.1.7/5.1.3};
  - a malformed parameter C{501 5.5.4}; an unknown one (SMTPUTF8 among
    them) C{555 5.5.4}.
"""

from __future__ import annotations

import re

#: RFC 5321 4.5.3.1
MAX_LOCAL_PART, MAX_DOMAIN, MAX_PATH = 64, 255, 256
#: esmtp-keyword ["=" esmtp-value] (RFC 5321 4.1.2)
_PARAMETER = re.compile(rb"\A([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?\Z")
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
#: what a path cannot hold: a control, a space, DEL, "<"
_PATH_BAD = re.compile(rb"[\x00-\x20\x7f<]")


class FieldError(ValueError):
    """A field of a command cannot be accepted: the reply to send."""

    def __init__(self, code: int, status: str, text: str):
        super().__init__(code, status, text)
        self.code, self.status, self.text = code, status, text

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


def printable(text: str, limit: int = 200) -> str:
    """Printable ASCII only, for replies and headers."""
    text = str(text)
    if text.isascii() and text.isprintable():  # the usual case, at C speed
        return text[:limit]
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:limit]


def check_line(line: bytes, what: str) -> str:
    """
    A whole command line as text, or L{FieldError} when it holds a byte the
    store cannot keep (a control character) or is not UTF-8.  C{what} names
    the command in the reply.
    """
    bad = _CONTROL.search(line)
    if bad:
        raise FieldError(501, "5.5.2", f"{what} contains a control character "
                                       f"(0x{bad.group()[0]:02X}); refused")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise FieldError(501, "5.5.2", f"{what} is not valid UTF-8; refused") from None


def check_helo(arg: bytes, verb: str) -> str:
    """The HELO/EHLO name: printable ASCII, at most a domain's length."""
    if not arg:
        raise FieldError(501, "5.5.4", f"Syntax: {verb} hostname")
    if not arg.isascii():
        raise FieldError(501, "5.5.2", f"{verb} name is not ASCII (send the A-label form)")
    if len(arg) > MAX_DOMAIN + 2 or b" " in arg:  # +2: an address literal's [ ]
        raise FieldError(501, "5.5.2", f"{verb} takes one name of at most {MAX_DOMAIN} octets")
    return arg.decode("ascii")


def parse_path(rest: bytes) -> tuple[str, list[bytes]]:
    """
    C{<local@domain> PARAM=x …} (angle brackets optional, source routes
    dropped) -> (address, params).  ValueError when malformed.
    """
    rest = rest.strip()
    if rest.startswith(b"<"):
        end = rest.find(b">")
        if end < 0:
            raise ValueError("no closing >")
        path, tail = rest[1:end], rest[end + 1:]
        if tail and not tail[:1].isspace():
            raise ValueError("text after >")
    else:
        path, _, tail = rest.partition(b" ")
        if not path:
            raise ValueError("no address")
    if path.startswith(b"@"):
        colon = path.find(b":")
        if colon < 0:
            raise ValueError("bad source route")
        path = path[colon + 1:]
    if _PATH_BAD.search(path):
        raise ValueError("bad character")
    address = path.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if len(address) > MAX_PATH:
        raise ValueError("too long")
    return address, tail.split()


def is_mailbox(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain)


def check_address(address: str, status: str, *, empty_ok: bool = False) -> str:
    """
    An address from MAIL (C{status} 5.1.7) or RCPT (5.1.3): ASCII (else
    C{553 5.6.7}), local@domain within RFC 5321's lengths.
    """
    if not address and empty_ok:
        return address
    if not address.isascii():
        raise FieldError(553, "5.6.7", "non-ASCII addresses are not accepted here "
                                       "(no SMTPUTF8)")
    local, _, domain = address.rpartition("@")
    if not is_mailbox(address):
        raise FieldError(501, status, "Bad address syntax")
    if len(local) > MAX_LOCAL_PART or len(domain) > MAX_DOMAIN:
        raise FieldError(501, status, f"address too long (local part at most {MAX_LOCAL_PART}, "
                                      f"domain at most {MAX_DOMAIN} octets)")
    return address


def parse_parameters(params: list[bytes]) -> dict[str, str | None]:
    """
    MAIL/RCPT parameters -> {KEYWORD: value or None}; L{FieldError} 501
    when one is malformed (or given twice).
    """
    out: dict[str, str | None] = {}
    for param in params:
        match = _PARAMETER.match(param)
        if not match:
            shown = printable(param.decode("utf-8", "replace"), 40)
            raise FieldError(501, "5.5.4", f"Bad parameter syntax: {shown}")
        key = match.group(1).decode("ascii").upper()
        if key in out:
            raise FieldError(501, "5.5.4", f"Parameter {key[:30]} given twice")
        value = match.group(2)
        out[key] = value.decode("ascii") if value is not None else None
    return out


def check_mail_parameters(params: dict[str, str | None], max_size: int) -> None:
    """SIZE= and BODY= are known; anything else is C{555 5.5.4}."""
    for key, value in params.items():
        if key == "SIZE":
            if value is None or not value.isdigit() or len(value) > 20:
                raise FieldError(501, "5.5.4", "Bad SIZE parameter")
            if int(value) > max_size:
                raise FieldError(552, "5.3.4", "Message size exceeds fixed limit")
        elif key == "BODY":
            if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                raise FieldError(501, "5.5.4", "Bad BODY parameter")
        elif key == "SMTPUTF8":
            raise FieldError(555, "5.5.4", "SMTPUTF8 is not supported here")
        else:
            raise FieldError(555, "5.5.4", f"Unsupported parameter {key[:30]}")


def check_rcpt_parameters(params: dict[str, str | None]) -> None:
    """No RCPT parameter is known (DSN is not offered)."""
    for key in params:
        raise FieldError(555, "5.5.4", f"Unsupported parameter {key[:30]}")
