"""
Find the group members' real addresses in text and replace them.

Matching runs on the text as it reads (L{emaild.inbound.readable}): an
address hidden in nested percent-encoding (a link wrapper's
C{?u=https%253A%252F%252F...mailto%253Aada%2540example.org}), in HTML
character references (C{ada&#x40;example&period;org}), quoted-printable or
JavaScript escapes, full-width or invisible characters is found like a plain
one, and the span of the original it was read from is replaced.  Also found:
upper case, a quoted local part (C{"ada"@example.org}), the domain in
Unicode or punycode, and C{ada [at] example [dot] org}.  Behind C{mailto:},
in angle brackets after the person's real name, and in the "On ..., Ada
Lovelace <ada@...> wrote:" line a client puts over a quote, the whole
becomes the member's name in the group.
"""

from __future__ import annotations

import functools
import html
import re
import secrets
import urllib.parse
from typing import Iterable, Mapping

from emaild.inbound.addresspatterns import (
    AT_WRITTEN,
    DOT_WRITTEN,
    AddressPatterns,
    address_patterns,
)
from emaild.inbound.readable import ReadableText, readable, readable_bytes
from emaild.mailformat.headers import header_text

ANONYMOUS = "a group member"
#: the same, where it stands first, as in a From display name
ANONYMOUS_NAME = "A group member"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: words that end a name search: "at 10:00 AM Ada Lovelace <ada@...>"
_NAME_STOP = {"am", "pm", "a.m.", "p.m."}
_AT_ANYHOW = re.compile(r"@|[\[({<]\s*at\s*[\])}>]", re.IGNORECASE)


def clean(value: str) -> str:
    return header_text(CONTROL.sub(" ", value or ""))


def usable_name(text: str) -> bool:
    """
    Whether C{text} can stand for a person in a copy: not empty, and no
    address or C{@} in any spelling, which could join the text around it
    into an address again (an LMS without names sends the address as name).
    """
    read = readable(text or "")
    return bool(text and text.strip()) and "<" not in read and not _AT_ANYHOW.search(read)


def scrub_map(members: Iterable[tuple[str, str]]) -> dict[str, str]:
    """
    (real address, display name) pairs -> lower-cased address -> the text
    that replaces it.  A name that is empty or itself looks like an
    address becomes L{ANONYMOUS}.
    """
    # remembered for a group's member list, which every post of a batch
    # (and of the batches after it) passes again: for a thousand members,
    # checking each name took 10 ms a post
    members = tuple(members)
    try:
        return dict(_scrub_map(members))
    except TypeError:  # a pair that is a list: not a key, read each time
        return dict(_scrub_map.__wrapped__(members))


@functools.lru_cache(maxsize=64)
def _scrub_map(members: tuple[tuple[str, str], ...]) -> dict[str, str]:
    # shared: scrub_map hands out copies
    result = {}
    for address, name in members:
        key = (address or "").strip().lower()
        if key:
            result[key] = shown_name(name)
    return result


@functools.lru_cache(maxsize=4096)
def shown_name(name: str, fallback: str = ANONYMOUS) -> str:
    """
    C{name} as mail we write may show it: cleaned and cut to 100
    characters, or C{fallback} when what is left is empty or is or holds an
    address.  Remembered: every post and every copy of a post asks again.
    """
    text = clean(name)[:100]
    return text if _usable(text) else fallback


def _checked_name(name: str) -> str:
    # what a Scrubber asks of each name scrub_map gave it
    return name if _usable(name) else ANONYMOUS


@functools.lru_cache(maxsize=4096)
def _usable(text: str) -> bool:
    """L{usable_name}, remembered (the names of a group are asked about again and again)."""
    return usable_name(text)


@functools.lru_cache(maxsize=64)
def _names(scrub: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """
    The L{Scrubber}'s key -> name map for C{scrub}'s items, remembered (the
    posts of a group pass the same map); shared, so never changed.
    """
    return {k.strip().lower(): _checked_name(v) for k, v in scrub if k and k.strip()}


@functools.lru_cache(maxsize=1024)
def _display_name(patterns: AddressPatterns | None, name: str) -> str:
    """L{Scrubber.display_name}, remembered: a member's posts show the same name."""
    name = clean(name)[:100]
    found = patterns is not None and patterns.search(readable(name)) is not None
    return name if usable_name(name) and not found else ANONYMOUS_NAME


class Scrubber:
    """
    Finds the member addresses in text, however encoded (see the module's
    docstring), and replaces them, with the display name in front when
    there is one.
    """

    def __init__(self, scrub: Mapping[str, str]):
        #: key -> the name that replaces it (shared between scrubbers: read only)
        self.names = _names(tuple(scrub.items()))
        if not self.names:
            self.address = None
            self._keys: dict[str, str] = {}
            return
        patterns = address_patterns(tuple(sorted(self.names)))
        #: every spelling of each address (IDNA forms) -> its key
        self._keys = patterns.keys
        self.address = patterns.address
        self._patterns = patterns

    @functools.cached_property
    def tokens(self) -> dict[str, str]:
        """
        Key -> what replaces it in an id (Message-ID, Content-ID, cid:
        links): new for each scrubber, so two posts' ids do not tell that
        they named the same person.  Made when first needed: most posts
        carry no member's address in an id.
        """
        keys = sorted(self.names)
        hexes = secrets.token_hex(4 * len(keys))
        return {k: f"m{i}.{hexes[8 * i:8 * i + 8]}@removed.invalid" for i, k in enumerate(keys)}

    # the patterns compiled when first needed (see AddressPatterns)
    angle = property(lambda self: self._patterns.angle)
    mailto = property(lambda self: self._patterns.mailto)
    cid = property(lambda self: self._patterns.cid)
    raw = property(lambda self: self._patterns.raw)

    def _key(self, found: str) -> str:
        text = re.sub(AT_WRITTEN, "@", found.replace('"', ""), flags=re.IGNORECASE)
        local, _, domain = text.rpartition("@")
        domain = re.sub(DOT_WRITTEN, ".", domain, flags=re.IGNORECASE)
        text = (f"{local}@{domain}" if local else domain).strip().lower()
        return self._keys.get(text, text)

    def name(self, found: str) -> str:
        return self.names.get(self._key(found), ANONYMOUS)

    def token(self, found: str) -> str:
        return self.tokens.get(self._key(found), "removed@removed.invalid")

    def found(self, text: str) -> bool:
        return self.address is not None and self._patterns.search(readable(text)) is not None

    def found_bytes(self, data: bytes) -> bool:
        if self.address is None:
            return False
        return self.raw.search(data) is not None or \
            self._patterns.search(readable_bytes(data)) is not None

    def display_name(self, name: str) -> str:
        """
        C{name} as a copy may show it in From and Reply-To:
        L{ANONYMOUS_NAME} when it is or holds an address (anyone's, in any
        spelling).
        """
        return _display_name(self._patterns if self.address is not None else None, name)

    def found_literal(self, data: bytes) -> bool:
        """Whether a member's address is in C{data} as written (any case)."""
        return self.address is not None and self.raw.search(data) is not None

    def text(self, text: str, html_: bool = False, ident: bool = False) -> str:
        return self.scrub(text, html_, ident)[0]

    def scrub(self, text: str, html_: bool = False, ident: bool = False) -> tuple[str, bool]:
        """
        C{text} with every member address replaced (see L{text}), and
        whether there was any to replace.
        """
        found = False
        # "ADA@EXAMPLE.ORG" with "ada@example.org" pasted into it: replacing
        # one can join the rest into another, so repeat until none is left
        # (names hold no @, so each round removes at least one)
        for _ in range(20):
            if not self.found(text):
                break
            found = True
            text = self._once(text, html_, ident)
        return text, found

    def _once(self, text: str, html_: bool, ident: bool) -> str:
        # ids (Content-ID and the cid: links to it) must stay one token and match
        text = self._replace(text, self.cid, lambda m: self.token(m.group(2)), group=2,
                             html_=False)
        if ident:
            return self._replace(text, self.address, lambda m: self.token(m.group(0)),
                                 html_=False)
        text = self._replace(text, self.angle, lambda m: self.name(m.group(1)), html_=html_,
                             named=True)
        text = self._replace(text, self.mailto, lambda m: self.name(m.group(1)), html_=html_)
        return self._replace(text, self.address, lambda m: self.name(m.group(0)), html_=html_)

    def _replace(self, text: str, pattern, replacement, *, html_: bool, group: int = 0,
                 named: bool = False) -> str:
        """
        Replace each match of C{pattern} in the readable form of C{text} by
        C{replacement(match)}, in C{text} itself (the span it was read from,
        however encoded); C{group}: only that group of the match is
        replaced, the rest stays as written.  C{named}: a name in front of
        the match ("Ada Lovelace <...>") goes too.  The replacement is
        percent-encoded where the span was, HTML-escaped in HTML.
        """
        view = ReadableText(text)
        out, last, floor = [], 0, 0
        for m in pattern.finditer(view.text):
            start, end = m.span(group)
            if named:
                start = self._name_start(view.text, floor, start)
            begin, finish = view.span(start, end)
            if begin < last:
                continue  # overlaps what the previous match replaced
            written = text[begin:finish]
            new = replacement(m)
            if "%" in written:
                new = urllib.parse.quote(new, safe="@")
            elif html_:
                new = html.escape(new)
            out += [text[last:begin], new]
            last, floor = finish, m.end()
        out.append(text[last:])
        return "".join(out)

    @staticmethod
    def _name_start(text: str, floor: int, at: int) -> int:
        line = max(floor, text.rfind("\n", 0, at) + 1)
        before = text[line:at]
        stripped = before.rstrip()
        for quote in ('"', "&quot;"):
            if stripped.endswith(quote):
                opening = stripped.rfind(quote, 0, len(stripped) - len(quote))
                if opening >= 0:
                    return line + opening
        cut = max(before.rfind(c) for c in ":,;>([\"'*")
        start = line + cut + 1
        words = list(re.finditer(r"\S+", text[start:at]))
        accepted = None
        for word in reversed(words[-4:]):
            w = word.group(0)
            if w[0].islower() or w[0].isdigit() or w.lower() in _NAME_STOP:
                break
            accepted = word
        return start + accepted.start() if accepted else at
