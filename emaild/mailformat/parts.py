"""
Text MIME parts: the body encoded as 7bit when it can be, else
quoted-printable, and the part's own headers.  LF line endings.
"""

from __future__ import annotations

import binascii
import re

_NEWLINES = re.compile(r"\r\n?")


def normalise_newlines(text: str) -> str:
    """
    C{text} with LF line endings and a final newline.
    """
    if "\r" in text:
        text = _NEWLINES.sub("\n", text)
    return text if text.endswith("\n") else text + "\n"


def encode_text_part(text: str) -> tuple[str, bytes]:
    """
    (Content-Transfer-Encoding, encoded bytes) for a text part: 7bit when the
    text is ASCII with lines within RFC 5322's 998, else quoted-printable.
    """
    raw = normalise_newlines(text).encode("utf-8")
    # (a part of at most 998 bytes has no longer line: no need to split it)
    if raw.isascii() and (len(raw) <= 998 or max(map(len, raw.split(b"\n"))) <= 998):
        return "7bit", raw
    encoded = binascii.b2a_qp(raw, quotetabs=False, istext=True, header=False)
    return "quoted-printable", encoded if encoded.endswith(b"\n") else encoded + b"\n"


def text_part_headers(subtype: str, cte: str) -> bytes:
    """
    The headers of a UTF-8 C{text/<subtype>} part and the blank line after them.
    """
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\n'
        f"Content-Transfer-Encoding: {cte}\n\n"
    ).encode("ascii")
