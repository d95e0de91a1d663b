"""
The scrubber's reading finds each encoded token by matching only where
one can start (L{emaild.inbound.readable}): it must find exactly what a
search for the whole token pattern finds, from every position, in the
corpus and in generated text dense with every kind of token and its near
misses; and reading 2 KB without a token must not cost a full-pattern
search at every character.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from twisted.trial import unittest

from emaild.inbound import readable as module
from emaild.inbound.readable import readable

CORPUS = Path(__file__).resolve().parent.parent / "corpus"

FRAGMENTS = [
    "%40", "%2540", "%4", "%", "=40", "=4", "=", "=?utf-8?q?a=40b?=", "=?x?b?YUBi?=", "=?",
    "&#64;", "&#64", "&#x40;", "&#x", "&#", "&commat;", "&commat", "&amp", "&", "&a1",
    "data:text/plain;base64,YUBiLmM=", "DATA:x;BASE64,YUBiLmM=", "Data:", "data:", "data",
    "dat", "d", "D", "\\u0040", "\\u00",
    "\\x40", "\\x", "\\", "\u00ad", "\u200b", "\u2060", "\ufeff", "\u180e", "\uff20", "\ufe6b",
    "\uff5e", "\uff5f", "@", "a", "b.c", " ", "\r\n", "x", "é", "<", ">", ";", "?", "=?=",
    ":", "a:", "ata:", "dAtA:", "dATa:x;bAsE64,YUBi", "daTa;", "d:ata:", "https://x/?a=b&c",
]


def texts():
    for path in sorted(CORPUS.glob("*.eml")):
        yield path.read_bytes().decode("latin-1")
    rng = random.Random(12)
    for _ in range(400):
        yield "".join(rng.choice(FRAGMENTS) for _ in range(rng.randrange(1, 40)))


class TokenScanTests(unittest.TestCase):
    def test_same_tokens_as_a_full_search(self):
        checked = 0
        for text in texts():
            starts = module._START_7BIT if text.isascii() else module._START
            for pos in range(0, len(text) + 1, 1 if len(text) < 400 else 401):
                expected = module._TOKEN.search(text, pos)
                found = module._Scan(text, starts).token(pos)
                self.assertEqual(found and (found.span(), found.group(0)),
                                 expected and (expected.span(), expected.group(0)),
                                 (text, pos))
                checked += 1
        self.assertGreater(checked, 5000)

    def test_one_scan_from_left_to_right_finds_what_a_full_search_finds(self):
        # a round's scan remembers where each kind of start is next: from
        # increasing positions (every step a round can take) it must still
        # find what a fresh search finds
        rng = random.Random(7)
        checked = 0
        for text in texts():
            scan = module._Scan(text)
            pos = 0
            while pos <= len(text):
                expected = module._TOKEN.search(text, pos)
                found = scan.token(pos)
                self.assertEqual(found and (found.span(), found.group(0)),
                                 expected and (expected.span(), expected.group(0)),
                                 (text, pos))
                checked += 1
                if found is None:
                    break
                # on after the token's first character, its end, or a jump
                pos = rng.choice([found.start() + 1, found.end(), pos + rng.randrange(1, 9)])
        self.assertGreater(checked, 3000)

    def test_data_urls_are_found_by_their_colon_as_by_a_search(self):
        rng = random.Random(3)
        pieces = ["d", "D", "a", "A", "t", "T", ":", "data", "DATA", "x", " ", "é", "\u212a"]
        for _ in range(3000):
            text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 30)))
            for pos in range(len(text) + 1):
                m = module._DATA_URL.search(text, pos)
                self.assertEqual(module._find_data_url(text, pos), m.start() if m else -1,
                                 (text, pos))

    def test_every_start_character_is_one_a_token_can_start_with(self):
        suffixes = ["", "40", "#64;", "#x40;", "amp;", "u0040", "x40", "?utf-8?q?a?=",
                    "ata:x;base64,YUBi"]
        for code in range(0x10000):
            c = chr(code)
            if c in "dD":
                continue  # data: URLs are found by their whole prefix
            if any(module._TOKEN.match(c + suffix) for suffix in suffixes):
                self.assertIsNotNone(module._START.match(c), hex(code))
                if c.isascii():
                    self.assertIsNotNone(module._START_7BIT.match(c), hex(code))

    def test_text_without_tokens_is_read_quickly(self):
        body = "".join(f"{i % 10}" + "X" * 77 + "\r\n" for i in range(26))
        self.assertEqual(readable(body), body)
        t0 = time.process_time()
        for _ in range(200):
            readable(body)
        # a search for the whole pattern at every character took ~240 us
        # per call on the bench machine; scanning for starts takes ~15
        self.assertLess((time.process_time() - t0) / 200, 120e-6)

    def test_plain_text_costs_less_than_one_search_for_a_data_url(self):
        # ~2 KB like smtp-source's, with "da" and colons everywhere: reading
        # it must not cost a regex scan that tries every character (the
        # case-insensitive data: prefix took 22 us alone, reading 35)
        body = "".join(f"La de da de da {i}: ok.\r\n" for i in range(90))
        self.assertEqual(readable(body), body)

        def best(f):
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(50):
                    f()
                times.append(time.perf_counter() - t0)
            return min(times)

        self.assertLess(best(lambda: readable(body)),
                        best(lambda: module._DATA_URL.search(body)))


def every_round(text: str) -> str:
    """The reading without the short way for text that reads as written."""
    for _ in range(module.MAX_ROUNDS):
        result = module._one_round(text)
        if result is None:
            break
        text = result[0]
    return text


class AsWrittenTests(unittest.TestCase):
    def test_reads_as_the_full_reading_does(self):
        # whether or not it takes the short way
        short = 0
        for text in texts():
            for piece in [text, *text.split("\n")]:
                self.assertEqual(readable(piece), every_round(piece), piece)
                short += module._as_written(piece)
        self.assertGreater(short, 100)

    def test_text_with_a_token_start_is_read(self):
        for text in ["a%40b", "a=40b", "a&#64;b", "a&commat;b", "a\\u0040b", "xdata:,YUBi",
                     "x DATA:text/plain;base64,YUBiLmM=", "a\uff20b", "caf\u00e9"]:
            self.assertFalse(module._as_written(text), text)
        for text in ["a=3Db", "a=?utf-8?q?x?=", "soft=\r\nbreak=20"]:
            self.assertFalse(module._as_written(text), text)
        for text in ["Subject", "Content-Type", "ada at example.org", "a: b", "data", "",
                     "YUBiLmM=\r\nYQ==\r\n", "a = b", "x=\r\ny", "=zz", "=4", "==="]:
            self.assertTrue(module._as_written(text), text)
        self.assertEqual(readable("m0%40members.example"), "m0@members.example")
        self.assertIn("a@b.c", readable("data:text/plain;base64,YUBiLmM="))
