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

from emaild.inbound.readable import ReadableText, readable, readable_bytes
from emaild.mailformat.headers import header_text

ANONYMOUS = "a group member"
#: the same, where it stands first, as in a From display name
ANONYMOUS_NAME = "A group member"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: words that end a name search: "at 10:00 AM Ada Lovelace <ada@...>"
_NAME_STOP = {"am", "pm", "a.m.", "p.m."}
#: "@" as people write it to get past harvesters
_AT = r"(?:\s*@\s*|\s*[\[({<]\s*at\s*[\])}>]\s*|\s+at\s+)"
_DOT = r"(?:\.|\s*[\[({<]\s*dot\s*[\])}>]\s*|\s+dot\s+)"
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


def _domain_forms(domain: str) -> set[str]:
    """The domain as written, and in Unicode and in punycode (IDNA)."""
    forms = {domain}
    try:
        if domain.isascii():
            forms.add(domain.encode("ascii").decode("idna").lower())
        else:
            forms.add(domain.encode("idna").decode("ascii").lower())
    except (UnicodeError, ValueError):
        pass
    return forms


def _tree(words: Iterable[tuple[str, ...]]) -> dict:
    tree: dict = {}
    for word in words:
        node = tree
        for token in word:
            node = node.setdefault(token, {})
        node[""] = {}
    return tree


def _emit(node: dict) -> str:
    ends = "" in node
    branches = [token + _emit(child) for token, child in sorted(node.items()) if token]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 and not ends else "(?:" + "|".join(branches) + ")"
    return body + "?" if ends else body


def _trie(words: Iterable[tuple[str, ...]]) -> str:
    """
    One regex for many token sequences, sharing prefixes, so a group of a
    thousand members costs a few comparisons per character, not a thousand.
    """
    return _emit(_tree(words))


#: spellings up to which the addresses are looked for with L{_first_search}
_FIRST_SEARCH_WORDS = 64
#: the characters with a case (see L{cased_characters}), once found
_CASED: list[str] = []


def cased_characters() -> str:
    """
    Every character that has a lower- or upper-case form other than itself
    (about 2,900).  Only these match a character other than themselves in a
    case-insensitive pattern: the regex engine compares simple lower-case
    forms, and its extra equivalences (the Kelvin sign and k, the long s
    and s...) are all between such characters.  Found once per process by
    looking at every code point (~0.2 s); the relay processor does it when
    it starts rather than in its first batch.
    """
    if not _CASED:
        _CASED.append("".join(c for c in map(chr, range(0x110000))
                              if c.lower() != c or c.upper() != c))
    return _CASED[0]


@functools.lru_cache(maxsize=4096)
def _case_variants(chars: str) -> str:
    """
    Every character that one of C{chars} matches in a case-insensitive
    pattern, as the regex engine itself decides (it also folds, e.g., the
    Kelvin sign into k and the long s into s): C{chars} themselves and the
    L{cased_characters} the pattern matches (~60 us; it was a scan of every
    code point, 20 ms, for each new set).
    """
    pattern = re.compile("[" + "".join(re.escape(c) for c in chars) + "]", re.IGNORECASE)
    return "".join(sorted(set(pattern.findall(cased_characters() + chars))))


def _first_search(tree: dict) -> str | None:
    """
    The pattern C{'"?' + _emit(tree)} (case-insensitive), written so that
    the regex engine can skip to where a match may start: it gets a fast
    scan only when a pattern starts with a set of characters that has no
    case, and case-insensitive letters (or the optional quote) gave it none
    (searching 2 KB took ~30 us).  So the first character is matched from
    the exact set of characters each first token matches in any case (see
    L{_case_variants}) and the quote, and each branch then checks, looking
    behind, that its own first token is the one there, in the order the
    branches had.  None when a first token is not a single character.
    """
    if "" in tree:
        return None
    firsts, branches = [], []
    for token, child in sorted(tree.items()):
        char = token[1:] if len(token) == 2 and token[0] == "\\" else token
        if len(char) != 1:
            return None
        firsts.append(char)
        branches.append(f"(?i:(?<={token}){_emit(child)})")
    starts = "".join(re.escape(c) for c in _case_variants("".join(sorted(set(firsts)))) + '"')
    return f'[{starts}](?:(?<=")(?i:{_emit(tree)})|' + "|".join(branches) + ")"


def _tokens(local: str, domain: str) -> tuple[str, ...]:
    return (tuple(re.escape(c) for c in local) + ('"?' + _AT,)
            + tuple(_DOT if c == "." else re.escape(c) for c in domain))


class _Patterns:
    """
    The patterns for one set of addresses.  Only C{address} (is any of
    them there?) is compiled at once; the others when a match must be
    replaced: for a group of a thousand members each is a large regex,
    and most posts name nobody.
    """

    def __init__(self, keys: dict[str, str], address: str, first_search: str | None = None):
        #: every spelling of each address (IDNA forms) -> its key
        self.keys = keys
        self.source = address
        self.address = re.compile(address, re.IGNORECASE)
        #: finds what C{address} finds, faster (see _first_search)
        self.search = self.address.search if first_search is None \
            else re.compile(first_search).search

    @functools.cached_property
    def angle(self) -> re.Pattern:
        # Gmail and Outlook write &lt;<a href="mailto:ada@x">ada@x</a>&gt;
        # (read as <<a href="mailto:ada@x">ada@x</a>>)
        return re.compile(r"<\s*(?:<a\b[^<>]*>\s*)?(?:mailto:\s*)?(" + self.source
                          + r")\s*(?:</a>\s*)?>", re.IGNORECASE)

    @functools.cached_property
    def mailto(self) -> re.Pattern:
        return re.compile(r"mailto:\s*(" + self.source + r")(?:\?[^\s\"'<>]*)?", re.IGNORECASE)

    @functools.cached_property
    def cid(self) -> re.Pattern:
        return re.compile(r"(cid:[^\s\"'<>()]*?)(" + self.source + r")", re.IGNORECASE)

    @functools.cached_property
    def raw(self) -> re.Pattern:
        # 8-bit bytes as they came: UTF-8 domains show here
        return re.compile(b"|".join(re.escape(k.encode("utf-8", "replace")) for k in self.keys),
                          re.IGNORECASE)


@functools.lru_cache(maxsize=64)
def _patterns(keys: tuple[str, ...]) -> _Patterns:
    """
    The patterns for a set of addresses, built once per set (the posts of
    one group share it).
    """
    words, spellings = [], {}
    for key in keys:
        # matching runs on text as it reads, so an address that itself
        # holds what the reader decodes (x=40y@..., a%41b@..., tom&amp@...)
        # is looked for as it reads too
        for spelling in dict.fromkeys((key, readable(key).lower())):
            local, at, domain = spelling.rpartition("@")
            if not at:
                words.append(tuple(re.escape(c) for c in spelling))
                spellings[spelling] = key
                continue
            for form in _domain_forms(domain):
                words.append(_tokens(local, form))
                spellings[f"{local}@{form}"] = key
    # no word boundaries: in "ada@example.org.txt" or "img1.ada@example.org"
    # the member's address is still there to read, so it goes too (the
    # price: jimbob@example.net becomes "jimBob" when bob@example.net is a member)
    # A quoted local part: "ada"@example.org reads as ada@example.org.
    tree = _tree(words)
    # for a big group the first characters are most letters (little to
    # skip) and the pattern would be compiled twice: the plain one alone
    first_search = _first_search(tree) if len(words) <= _FIRST_SEARCH_WORDS else None
    return _Patterns(spellings, '"?(?:' + _emit(tree) + ")", first_search)


@functools.lru_cache(maxsize=1024)
def _display_name(patterns: _Patterns | None, name: str) -> str:
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
        patterns = _patterns(tuple(sorted(self.names)))
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

    # the patterns compiled when first needed (see _Patterns)
    angle = property(lambda self: self._patterns.angle)
    mailto = property(lambda self: self._patterns.mailto)
    cid = property(lambda self: self._patterns.cid)
    raw = property(lambda self: self._patterns.raw)

    def _key(self, found: str) -> str:
        text = re.sub(_AT, "@", found.replace('"', ""), flags=re.IGNORECASE)
        local, _, domain = text.rpartition("@")
        domain = re.sub(_DOT, ".", domain, flags=re.IGNORECASE)
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
