"""
Header lines built from text that may carry user data: every value goes
through L{header_text} (or L{email.utils.formataddr}), so no value can start
a new header line, and non-ASCII text becomes RFC 2047 encoded words.
Lines are LF-terminated; callers that write CRLF convert.
"""

from __future__ import annotations

import re
from email.header import Header
from email.utils import formataddr
from typing import Any

_WHITESPACE = re.compile(r"\s+")
#: what may stand between < and > in List-Unsubscribe (RFC 3986 characters
#: less the ones that would end or split the header)
_HEADER_URI = re.compile(r"^[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+;=%]+$")
#: a display name that formataddr would leave as it is (ASCII, none of
#: RFC 5322's specials), so the header can be written without it
_PLAIN_DISPLAY = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*")


class HeaderError(ValueError):
    """
    A value that cannot go into a header as it is (the message says which).
    """


def header_text(value: Any) -> str:
    """
    One line of header text: every run of whitespace, CR and LF included,
    becomes a single space, so user data cannot add header lines.
    """
    return _WHITESPACE.sub(" ", str(value)).strip()


def encoded_header(name: str, value: str) -> str:
    """
    C{Name: value}, folded and RFC 2047-encoded where it needs to be.
    """
    value = header_text(value)
    if value.isascii() and "=?" not in value and len(name) + 2 + len(value) <= 78:
        return f"{name}: {value}"  # the common case, without email.header's cost
    # text that looks like an encoded word is itself encoded, so readers
    # decode it back to the literal text (not to what it pretends to encode)
    charset = "us-ascii" if value.isascii() and "=?" not in value else "utf-8"
    return f"{name}: " + Header(value, charset, header_name=name).encode(linesep="\n")


def address_header(name: str, display: Any, address: str) -> str:
    """
    C{Name: Display Name <address>}; C{address} must already be checked
    (L{emaild.mailformat.addresses.check_address}).
    """
    display = header_text(display) if display else ""
    if "=?" not in display and _PLAIN_DISPLAY.fullmatch(display) and address.isascii():
        # what formataddr gives for such a name, at a fraction of its cost
        return f"{name}: {display} <{address}>" if display else f"{name}: {address}"
    if "=?" in display:
        encoded = Header(display, "utf-8", header_name=name).encode(linesep="\n")
        return f"{name}: {encoded} <{address}>"
    return f"{name}: " + formataddr((display, address), charset="utf-8")


def check_header_uri(uri: str) -> str:
    """
    Return C{uri} if it can stand between C{<} and C{>} in a header such as
    C{List-Unsubscribe}, else raise L{HeaderError}.
    """
    if not _HEADER_URI.match(uri) or len(uri) > 900:
        raise HeaderError(f"cannot put {uri!r} in a header")
    return uri
