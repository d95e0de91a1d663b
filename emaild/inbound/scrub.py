"""
Find the group members' real addresses in text and replace them.

An address can hide as C{%40} or C{&#64;}, behind C{mailto:}, in angle
brackets (also C{&lt;...&gt;}) after the person's real name, and in the
"On ..., Ada Lovelace <ada@...> wrote:" line a client puts over a quote;
all of these become the member's name in the group.
"""

from __future__ import annotations

import html
import re
import secrets
from typing import Iterable, Mapping

from emaild.mailformat.headers import header_text

ANONYMOUS = "a group member"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: words that end a name search: "at 10:00 AM Ada Lovelace <ada@...>"
_NAME_STOP = {"am", "pm", "a.m.", "p.m."}
_AT = re.compile(r"@|%40|&#", re.IGNORECASE)


def clean(value: str) -> str:
    return header_text(CONTROL.sub(" ", value or ""))


def scrub_map(members: Iterable[tuple[str, str]]) -> dict[str, str]:
    """
    (real address, display name) pairs -> lower-cased address -> the text
    that replaces it.  A name that is empty or itself looks like an
    address becomes L{ANONYMOUS}.
    """
    result = {}
    for address, name in members:
        key = (address or "").strip().lower()
        if key:
            text = clean(name)[:100]
            result[key] = text if _usable_name(text) else ANONYMOUS
    return result


def _usable_name(text: str) -> bool:
    # a name that is (or has) an address, or an @ in any spelling, could
    # join the text around it into an address again
    return bool(text) and "<" not in text and not _AT.search(text)


class Scrubber:
    """
    Finds the member addresses in text (also as C{%40}, C{&#64;}) and
    replaces them, with the display name in front when there is one.
    """

    def __init__(self, scrub: Mapping[str, str]):
        self.names = {k.strip().lower(): v if _usable_name(v) else ANONYMOUS
                      for k, v in scrub.items() if k and k.strip()}
        self.tokens = {k: f"m{i}.{secrets.token_hex(4)}@removed.invalid"
                       for i, k in enumerate(sorted(self.names))}
        if not self.names:
            self.address = None
            return
        alternatives = []
        for key in sorted(self.names, key=len, reverse=True):
            local, at, domain = key.rpartition("@")
            at_forms = r"(?:@|%40|&\#0*64;|&\#x0*40;)" if at else ""
            alternatives.append(re.escape(local) + at_forms + re.escape(domain) if at
                                else re.escape(domain))
        # no word boundaries: in "ada@example.org.txt" or "img1.ada@example.org"
        # the member's address is still there to read, so it goes too (the
        # price: jimbob@example.net becomes "jimBob" when bob@example.net is a member)
        address = "(?:" + "|".join(alternatives) + ")"
        flags = re.IGNORECASE
        self.address = re.compile(address, flags)
        # Gmail and Outlook write &lt;<a href="mailto:ada@x">ada@x</a>&gt;
        self.angle = re.compile(r"(?:<|&lt;|&\#0*60;|%3C)\s*(?:<a\b[^<>]*>\s*)?(?:mailto:\s*)?("
                                + address + r")\s*(?:</a>\s*)?(?:>|&gt;|&\#0*62;|%3E)", flags)
        self.mailto = re.compile(r"mailto:\s*(" + address + r")(?:\?[^\s\"'<>]*)?", flags)
        self.cid = re.compile(r"(cid:[^\s\"'<>()]*?)(" + address + r")", flags)
        self.raw = re.compile(b"|".join(re.escape(k.encode("utf-8", "replace"))
                                        for k in self.names), re.IGNORECASE)

    def _key(self, found: str) -> str:
        return re.sub(r"%40|&#0*64;|&#x0*40;", "@", found, flags=re.IGNORECASE).lower()

    def name(self, found: str) -> str:
        return self.names.get(self._key(found), ANONYMOUS)

    def token(self, found: str) -> str:
        return self.tokens.get(self._key(found), "removed@removed.invalid")

    def found(self, text: str) -> bool:
        return self.address is not None and self.address.search(text) is not None

    def found_bytes(self, data: bytes) -> bool:
        return bool(self.names) and self.raw.search(data) is not None

    def text(self, text: str, html_: bool = False, ident: bool = False) -> str:
        # "ADA@EXAMPLE.ORG" with "ada@example.org" pasted into it: replacing
        # one can join the rest into another, so repeat until none is left
        # (names hold no @, so each round removes at least one)
        for _ in range(20):
            if not self.found(text):
                break
            text = self._once(text, html_, ident)
        return text

    def _once(self, text: str, html_: bool, ident: bool) -> str:
        escape = html.escape if html_ else str
        # ids (Content-ID and the cid: links to it) must stay one token and match
        text = self.cid.sub(lambda m: m.group(1) + self.token(m.group(2)), text)
        if ident:
            return self.address.sub(lambda m: self.token(m.group(0)), text)
        text = self._angles(text, escape)
        text = self.mailto.sub(lambda m: escape(self.name(m.group(1))), text)
        return self.address.sub(lambda m: escape(self.name(m.group(0))), text)

    def _angles(self, text: str, escape) -> str:
        # "Ada Lovelace <ada@x>" and '"Ada" <ada@x>' become the replacement
        # as a whole: the name in front may be the member's real name
        out, last = [], 0
        for m in self.angle.finditer(text):
            start = self._name_start(text, last, m.start())
            out.append(text[last:start])
            out.append(escape(self.name(m.group(1))))
            last = m.end()
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
