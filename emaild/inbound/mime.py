"""
Text and transfer encodings for the parts L{emaild.inbound.rewrite} writes:
read a text part whatever its label says, and write it back 7-bit clean.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re

CRLF = b"\r\n"
#: a charset often mislabels its superset; decoding with the superset
#: loses nothing and the part keeps its declared name when it still fits
_SUPERSET = {"shift_jis": "cp932", "iso-8859-1": "cp1252", "us-ascii": "cp1252",
             "gb2312": "gb18030", "euc-kr": "cp949", "iso-2022-jp": "iso2022_jp_ext"}


def lines_ok(data: bytes) -> bool:
    # bytes.splitlines ends lines at CRLF, CR and LF, as the relay reads them
    return data.isascii() and max(map(len, data.splitlines()), default=0) <= 998


def crlf_bytes(data: bytes) -> bytes:
    # as many CRs as LFs as CRLFs: every line already ends in CRLF (the
    # usual case, and a regex substitution over the whole part otherwise)
    lf = data.count(b"\n")
    if not (lf == data.count(b"\r") == data.count(CRLF)):
        data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return data if data.endswith(CRLF) or not data else data + CRLF


def usable_charset(name: str | None) -> str | None:
    try:
        return codecs.lookup(name).name if name else None
    except (LookupError, ValueError, TypeError):
        return None


def decode_text(data: bytes, declared: str | None) -> str:
    codec = usable_charset(declared)
    if codec and codec != "ascii":
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError):
            fallback = _SUPERSET.get(declared.lower(), codec)
            return data.decode(fallback, "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # undeclared 8-bit text is more often Windows Latin than anything else
        return data.decode("cp1252", "replace")


def encode_text(text: str, declared: str | None) -> tuple[str, str, bytes]:
    """(charset, Content-Transfer-Encoding, CRLF body) for text we changed."""
    text = re.sub(r"\r\n|\r", "\n", text)
    charset = declared.lower() if declared and usable_charset(declared) else "utf-8"
    try:
        data = text.encode(charset)
    except (UnicodeEncodeError, LookupError):
        charset, data = "utf-8", text.encode("utf-8")
    if charset in ("us-ascii", "ascii") and not data.isascii():
        charset = "utf-8"
    if lines_ok(data):
        return charset, "7bit", crlf_bytes(data)
    wide = usable_charset(charset) in ("utf-16", "utf-16-le", "utf-16-be", "utf-32")
    if not wide and sum(b > 127 for b in data) * 4 < len(data):
        qp = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False)
        return charset, "quoted-printable", crlf_bytes(qp)
    return charset, "base64", crlf_bytes(base64.encodebytes(data))
