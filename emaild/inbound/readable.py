"""
Text as a reader (or a browser, or a link wrapper's redirect) will read it,
with the way back to the text as written.

An address can be written in many ways that all read the same: C{%40},
C{%2540} (percent-encoding inside a percent-encoded URL, as link wrappers
write), C{&#64;}, C{&#x40}, C{&commat;}, C{=40}, C{\\u0040}, encoded words,
a C{data:...;base64,} URL, full-width C{＠}, or with invisible characters in
between.  L{ReadableText} undoes all of these, again and again until
nothing changes (C{%252540} -> C{%2540} -> C{%40} -> C{@}), and remembers
which span of the original each character came from, so a match found in
the readable text can be replaced in the original, encodings and all.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import codecs
import html
import re
import unicodedata
from email.header import decode_header, make_header
from html.entities import html5

#: rounds of decoding: each undoes one layer of every encoding at once
MAX_ROUNDS = 8
_LONGEST_ENTITY = max(len(name) for name in html5)

_TOKEN = re.compile(
    r"=\?[^?\s]{1,40}\?[bBqQ]\?[^?\s]{0,1000}\?="   # RFC 2047 encoded word
    r"|(?i:data:[^,\s\"'<>]{0,100};base64,)[A-Za-z0-9+/=%]{4,}"  # data: URL, any case
    r"|&#[0-9]{1,7};?|&#[xX][0-9a-fA-F]{1,6};?"     # numeric character references
    r"|&[A-Za-z][A-Za-z0-9]{0," + str(_LONGEST_ENTITY) + r"};?"  # named ones
    r"|(?:[%=][0-9A-Fa-f]{2})+"                     # percent- and QP-style octets
    r"|\\u[0-9A-Fa-f]{4}|\\x[0-9A-Fa-f]{2}"         # JavaScript/JSON escapes
    r"|[\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff]"  # invisible
    r"|[\ufe50-\ufe6b\uff01-\uff5e]"                # small and full-width forms
)

#: where a token can start: every alternative of L{_TOKEN} but the data:
#: URL begins with one of these characters (for 7-bit text, the first
#: four).  An alternation whose branches do not all start with a literal
#: gets no fast scan from the regex engine: searching for L{_TOKEN} in 2 KB
#: of text without one took 240 us, finding where one may start and
#: matching there takes a tenth of that.
_START = re.compile(r"[=&%\\\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff\ufe50-\ufe6b\uff01-\uff5e]")
_START_7BIT = re.compile(r"[=&%\\]")
#: a data: URL's start (its scheme and ";base64," are case-insensitive)
_DATA_URL = re.compile(r"[dD][aA][tT][aA]:")
_BASE64_MARK = re.compile(r";base64,", re.IGNORECASE)


def _find_data_url(text: str, pos: int) -> int:
    """
    C{_DATA_URL.search(text, pos).start()}, or -1: found by its "a:" or
    "A:" (C{str.find}, a fast scan; far rarer in text than a colon) and
    the three letters before it, since a search for the case-insensitive
    letters tries every character (22 us in 2 KB of text that has no data:
    URL, against about one).
    """
    best = -1
    for mark in ("a:", "A:"):
        at = text.find(mark, pos + 3)
        while at >= 0 and (best < 0 or at - 3 < best):
            if _DATA_URL.match(text, at - 3):
                best = at - 3
                break
            at = text.find(mark, at + 1)
    return best


class _Scan:
    """
    Where the tokens of one text are: C{_TOKEN.search}, matching only where
    a token can start (L{_START}, or L{_START_7BIT} for ASCII text), for one
    round's scan from left to right: each kind of start is looked for again
    only once the scan has passed the one found before.  In 7-bit text each
    start character is found with C{str.find}, much faster than a regex
    scan for the set of them.
    """

    def __init__(self, text: str, starts: re.Pattern | None = None):
        self.text = text
        if starts is None:
            starts = _START_7BIT if text.isascii() else _START
        #: character -> its next position (-2: not looked for yet, -1: none)
        self.chars = dict.fromkeys("=&%\\", -2) if starts is _START_7BIT else None
        self.starts = starts
        self.start_at = -2
        self.data = -2

    def _start(self, pos: int) -> int:
        text = self.text
        at = -1
        if self.chars is not None:
            chars = self.chars
            for c, found in chars.items():
                if found != -1 and found < pos:
                    found = chars[c] = text.find(c, pos)
                if found >= 0 and (at < 0 or found < at):
                    at = found
        else:
            if self.start_at != -1 and self.start_at < pos:
                m = self.starts.search(text, pos)
                self.start_at = m.start() if m is not None else -1
            at = self.start_at
        if self.data != -1 and self.data < pos:
            self.data = _find_data_url(text, pos)
        if self.data >= 0 and (at < 0 or self.data < at):
            at = self.data
        return at

    def token(self, pos: int) -> re.Match | None:
        """C{_TOKEN.search(text, pos)}, for C{pos} never less than the last call's."""
        while True:
            at = self._start(pos)
            if at < 0:
                return None
            token = _TOKEN.match(self.text, at)
            if token is not None:
                return token
            pos = at + 1


def _named_entity(token: str) -> tuple[int, str] | None:
    """(length used, text) of the longest entity name that C{token} starts with."""
    name = token[1:].rstrip(";")
    if token.endswith(";") and name + ";" in html5:
        return len(token), html5[name + ";"]
    # without the semicolon (or a longer run of letters): the longest known prefix
    for end in range(len(name), 1, -1):
        text = html5.get(name[:end] + ";")
        if text is not None:
            return 1 + end, text
    return None


def _octets(token: str) -> list[tuple[int, int, str]]:
    """
    (start, end, text) within C{token} (a run of %XX / =XX) for each piece:
    UTF-8 sequences become their character; other bytes stay as written,
    except ASCII ones.
    """
    data = bytes(int(token[i + 1:i + 3], 16) for i in range(0, len(token), 3))
    pieces, i = [], 0
    while i < len(data):
        byte = data[i]
        length = 1 if byte < 0x80 else 2 if 0xC2 <= byte < 0xE0 else 3 if 0xE0 <= byte < 0xF0 \
            else 4 if 0xF0 <= byte < 0xF5 else 0
        try:
            text = data[i:i + length].decode("utf-8") if length else None
        except UnicodeDecodeError:
            text = None
        if text is None:
            pieces.append((3 * i, 3 * i + 3, token[3 * i:3 * i + 3]))
            i += 1
            continue
        pieces.append((3 * i, 3 * (i + length), text))
        i += length
    return pieces


def _encoded_word(token: str) -> str | None:
    try:
        return str(make_header(decode_header(token)))
    except Exception:  # noqa: BLE001 (any malformed word: read as written)
        return None


def _data_url(token: str) -> tuple[int, str] | None:
    mark = _BASE64_MARK.search(token)
    if mark is None:
        return None
    payload = token[mark.end():]
    try:
        data = base64.b64decode(re.sub(r"%3[dD]", "=", payload) + "===", validate=False)
        text = data.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return mark.end(), text


def _decode(token: str) -> list[tuple[int, int, str]] | None:
    """
    What C{token} reads as: (start, end, text) pieces within it, or None
    when it reads as written.
    """
    first = token[0]
    if token.startswith("=?"):
        text = _encoded_word(token)
        return [(0, len(token), text)] if text is not None and text != token else None
    if token[:5].lower() == "data:":
        found = _data_url(token)
        if found is None:
            return None
        start, text = found
        return [(0, start, token[:start]), (start, len(token), text)]
    if token.startswith("&#"):
        return [(0, len(token), html.unescape(token if token.endswith(";") else token + ";"))]
    if first == "&":
        found = _named_entity(token)
        return [(0, found[0], found[1])] if found else None
    if first in "%=":
        pieces = _octets(token)
        return pieces if any(text != token[s:e] for s, e, text in pieces) else None
    if first == "\\":
        return [(0, len(token), chr(int(token[2:], 16)))]
    if unicodedata.category(first) == "Cf" or first in "\u00ad\u180e":
        return [(0, len(token), "")]
    return [(0, len(token), unicodedata.normalize("NFKC", token))]


class _Round:
    """
    One layer of decoding: pieces of output, each from a span of input
    (literal pieces char for char, decoded ones as a whole).
    """

    def __init__(self):
        self.out_starts: list[int] = []
        self.in_starts: list[int] = []
        self.in_ends: list[int] = []
        self.literal: list[bool] = []
        self.length = 0

    def add(self, text: str, start: int, end: int, literal: bool) -> None:
        self.out_starts.append(self.length)
        self.in_starts.append(start)
        self.in_ends.append(end)
        self.literal.append(literal)
        self.length += len(text)

    def back(self, a: int, b: int) -> tuple[int, int]:
        """The input span that output [a, b) came from (b > a)."""
        i = bisect.bisect_right(self.out_starts, a) - 1
        start = (self.in_starts[i] + a - self.out_starts[i]) if self.literal[i] \
            else self.in_starts[i]
        j = bisect.bisect_right(self.out_starts, b - 1) - 1
        end = (self.in_starts[j] + b - self.out_starts[j]) if self.literal[j] \
            else self.in_ends[j]
        return start, end


def _one_round(text: str) -> tuple[str, _Round] | None:
    out: list[str] = []
    layer = _Round()
    pos = 0
    changed = False
    scan = _Scan(text)
    while True:
        m = scan.token(pos)
        if m is None:
            break
        pieces = _decode(m.group(0))
        if pieces is None:
            # read as written; go on after its first character (a longer
            # token may start inside it, e.g. "&amp&#64;")
            end = m.start() + 1
            if end > pos:
                out.append(text[pos:end])
                layer.add(text[pos:end], pos, end, True)
            pos = end
            continue
        if m.start() > pos:
            out.append(text[pos:m.start()])
            layer.add(text[pos:m.start()], pos, m.start(), True)
        for start, end, piece in pieces:
            literal = piece == m.group(0)[start:end]
            out.append(piece)
            layer.add(piece, m.start() + start, m.start() + end, literal)
            changed = changed or not literal
        pos = m.start() + pieces[-1][1]
    if not changed:
        return None
    if pos < len(text):
        out.append(text[pos:])
        layer.add(text[pos:], pos, len(text), True)
    return "".join(out), layer


#: where an C{=} starts a token: an encoded word or a QP-style octet
_EQUALS_TOKEN = re.compile(r"=(?:\?|[0-9A-Fa-f]{2})")


def _as_written(text: str) -> bool:
    """
    Whether C{text} has no token in it (see L{_TOKEN}), so it reads as
    written: ASCII with no C{& % \\}, no C{=} that starts an encoded word or
    an octet (base64's padding does not), and no data: URL.
    """
    return text.isascii() and "&" not in text and "%" not in text and "\\" not in text \
        and ("=" not in text or _EQUALS_TOKEN.search(text) is None) \
        and _find_data_url(text, 0) < 0


class ReadableText:
    """
    C{original} as it reads (L{text}), and L{span} to map a span of that
    back to the span of C{original} it was read from.
    """

    def __init__(self, original: str):
        self.original = original
        self._rounds: list[_Round] = []
        text = original
        # most text reads as written (header names, most header values,
        # plain lines; the scrubber asks of every header and part, 20 times
        # for a multipart post): then no round needs to scan it
        for _ in range(0 if _as_written(original) else MAX_ROUNDS):
            result = _one_round(text)
            if result is None:
                break
            text, layer = result
            self._rounds.append(layer)
        self.text = text

    @property
    def decoded(self) -> bool:
        """Whether anything read differently from how it was written."""
        return bool(self._rounds)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original that C{text[start:end]} was read from."""
        if end <= start:
            end = start + 1
        for layer in reversed(self._rounds):
            start, end = layer.back(start, end)
        return start, end


def readable(text: str) -> str:
    """C{text} as it reads (see L{ReadableText})."""
    return ReadableText(text).text


def readable_bytes(data: bytes) -> str:
    """Bytes of unknown encoding as they read (ASCII-compatible charsets)."""
    return readable(codecs.decode(data, "latin-1"))
