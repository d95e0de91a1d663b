"""
The scrubber looks for member addresses with a pattern written so the
regex engine can skip to where one may start (L{addresspatterns._first_search}): it
must find exactly what the plain case-insensitive pattern finds, from every
position, for generated member sets and texts dense with case variants
(the Kelvin sign, long s, dotted and dotless i, final sigma...), quotes,
"at"/"dot" spellings and near misses; and it must be faster.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

from twisted.trial import unittest

from emaild.inbound import addresspatterns
from emaild.inbound.readable import readable

CORPUS = Path(__file__).resolve().parent.parent / "corpus"

LOCAL_CHARS = "akmsiz09._-+\"'µσßé&="
ODD = ["K", "\u212a", "k", "S", "s", "\u017f", "I", "i", "\u0130", "\u0131", "\u03a3", "\u03c3",
       "\u03c2", "\u00b5", "\u039c", "\u03bc", "\u1e9e", "\u00df", "\ufb05", "\ufb06", "É", "é",
       '"', "@", " at ", " [at] ", "(AT)", ".", " dot ", " [DOT] ", " ", "\n", "x", "<", ">",
       "mailto:", "&", "%40"]


def member_sets(rng):
    yield ("m0@members.example", "m1@members.example")
    yield ("ada@example.org",)
    yield ("@example.org", "bob@example.net")  # an empty local part
    yield ("nodomain", "kim@x.org")  # an address without @
    yield ('"q"@x.org', "\u017fam@x.org", "\u03c3igma@x.org", "ki@x.org", "k@x.org")
    for _ in range(25):
        keys = []
        for _ in range(rng.randrange(1, 6)):
            local = "".join(rng.choice(LOCAL_CHARS) for _ in range(rng.randrange(1, 5)))
            keys.append(f"{local}@{rng.choice(['x.org', 'bücher.example', 'a.b.c'])}".lower())
        yield tuple(sorted(set(keys)))


CORPUS_TEXTS: list[str] = []


def texts(rng, keys, corpus: bool):
    if corpus:
        if not CORPUS_TEXTS:
            CORPUS_TEXTS.extend(readable(path.read_bytes().decode("latin-1"))
                                for path in sorted(CORPUS.glob("*.eml")))
        yield from CORPUS_TEXTS
    for _ in range(40):
        pieces = []
        for _ in range(rng.randrange(1, 25)):
            if rng.random() < 0.3:
                key = rng.choice(keys)
                written = "".join(c.upper() if rng.random() < 0.5 else c for c in key)
                pieces.append(written[:rng.randrange(1, len(written) + 1)])
            else:
                pieces.append(rng.choice(ODD))
        yield "".join(pieces)


class FirstSearchTests(unittest.TestCase):
    def test_finds_what_the_plain_pattern_finds(self):
        rng = random.Random(4)
        checked = found = 0
        for n, keys in enumerate(member_sets(rng)):
            patterns = addresspatterns.address_patterns(tuple(sorted(keys)))
            for text in texts(rng, list(keys), corpus=n < 2):
                step = 1 if len(text) < 300 else 211
                for pos in range(0, len(text) + 1, step):
                    expected = patterns.address.search(text, pos)
                    got = patterns.search(text, pos)
                    self.assertEqual(got and got.span(), expected and expected.span(),
                                     (keys, text, pos))
                    checked += 1
                    found += expected is not None
        self.assertGreater(checked, 20000)
        self.assertGreater(found, 2000)

    def test_every_case_variant_of_a_first_character_is_a_start(self):
        # the characters the engine itself matches case-insensitively
        variants = addresspatterns._case_variants("ks")
        for c in ("k", "K", "\u212a", "s", "S", "\u017f"):
            self.assertIn(c, variants)

    def test_case_variants_are_what_a_scan_of_every_code_point_finds(self):
        """
        Looking only among the cased characters finds every character the
        regex engine matches: checked against a scan of all code points for
        the characters of addresses (ASCII), those that fold oddly, and a
        sample of the rest (the whole set of cased characters and their
        case forms was checked once, off the suite: ~3,000 scans).
        """
        import random

        everything = "".join(map(chr, range(0x110000)))
        cased = addresspatterns.cased_characters()
        odd = "\u0130\u0131\u212a\u212b\u017f\u1e9e\u00df\u03c2\u03c3\u03f4\u0345\u1fbe\u2126"
        sample = random.Random(5).sample(cased, 40)
        for chars in [*map(chr, range(128)), *odd, *sample, "ks", "0.z", "\u4e2d"]:
            pattern = re.compile("[" + "".join(re.escape(c) for c in chars) + "]", re.I)
            self.assertEqual(addresspatterns._case_variants(chars),
                             "".join(sorted(set(pattern.findall(everything)))), repr(chars))

    def test_faster_than_the_plain_pattern(self):
        patterns = addresspatterns.address_patterns(("m0@members.example", "m1@members.example"))
        body = "".join(f"{i % 10}" + "X" * 77 + "\r\n" for i in range(26)) + \
            "Meet me at the main room, mm? " * 20

        def best(f):
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(30):
                    f(body)
                times.append(time.perf_counter() - t0)
            return min(times)

        self.assertIsNone(patterns.search(body))
        self.assertLess(best(patterns.search) * 2, best(patterns.address.search))

    def test_a_big_group_is_searched_with_the_plain_pattern(self):
        # most letters start someone's address there: little to skip, and
        # the pattern would be compiled twice
        keys = tuple(sorted(f"big.{i}@example.org" for i in range(addresspatterns.FIRST_SEARCH_WORDS + 1)))
        patterns = addresspatterns.address_patterns(keys)
        self.assertEqual(patterns.search, patterns.address.search)
        small = addresspatterns.address_patterns(keys[:3])
        self.assertNotEqual(small.search, small.address.search)
