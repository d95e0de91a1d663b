"""
The patterns that find a set of member addresses in text (for
L{emaild.inbound.scrub}): every spelling of each address (upper case, a
quoted local part, the domain in Unicode or punycode, C{ada [at] example
[dot] org}) in one regex that shares prefixes, so that a group of a
thousand members costs a few comparisons per character, not a thousand;
built once per set of addresses.
"""

from __future__ import annotations

import functools
import re
from typing import Iterable

from emaild.inbound.readable import readable

#: "@" and "." as people write them to get past harvesters
AT_WRITTEN = r"(?:\s*@\s*|\s*[\[({<]\s*at\s*[\])}>]\s*|\s+at\s+)"
DOT_WRITTEN = r"(?:\.|\s*[\[({<]\s*dot\s*[\])}>]\s*|\s+dot\s+)"


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


#: spellings up to which the addresses are looked for with L{_first_search}
FIRST_SEARCH_WORDS = 64
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
    return (tuple(re.escape(c) for c in local) + ('"?' + AT_WRITTEN,)
            + tuple(DOT_WRITTEN if c == "." else re.escape(c) for c in domain))


class AddressPatterns:
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
def address_patterns(keys: tuple[str, ...]) -> AddressPatterns:
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
    first_search = _first_search(tree) if len(words) <= FIRST_SEARCH_WORDS else None
    return AddressPatterns(spellings, '"?(?:' + _emit(tree) + ")", first_search)
