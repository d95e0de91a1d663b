"""
The line checks of the parts the relay writes (L{emaild.inbound.mime}):
the quick paths give what a regex over every line end gives, for any mix
of CR, LF and CRLF.
"""

from __future__ import annotations

import itertools
import random
import re

from twisted.trial import unittest

from emaild.inbound.mime import crlf_bytes, lines_ok


def by_regex_lines_ok(data: bytes) -> bool:
    return data.isascii() and all(len(line) <= 998 for line in re.split(rb"\r\n|\r|\n", data))


def by_regex_crlf(data: bytes) -> bool:
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return data if data.endswith(b"\r\n") or not data else data + b"\r\n"


class LineEndTests(unittest.TestCase):
    def samples(self):
        for n in range(6):  # every short mix
            for combo in itertools.product([b"\r", b"\n", b"x", b"\r\n", b"\xe9"], repeat=n):
                yield b"".join(combo)
        rng = random.Random(5)
        for _ in range(2000):
            pieces = [rng.choice([b"\r", b"\n", b"\r\n", b"\x0b", b"\x0c", b"\x1c"])
                      if rng.random() < 0.3 else b"x" * rng.choice([1, 10, 997, 998, 999])
                      for _ in range(rng.randrange(0, 12))]
            yield b"".join(pieces)

    def test_same_as_the_regex(self):
        for data in self.samples():
            self.assertEqual(lines_ok(data), by_regex_lines_ok(data), data[:40])
            self.assertEqual(crlf_bytes(data), by_regex_crlf(data), data[:40])

    def test_long_lines(self):
        self.assertTrue(lines_ok(b"x" * 998 + b"\r\n" + b"y" * 998))
        self.assertFalse(lines_ok(b"x" * 998 + b"\r" + b"y" * 999))
        self.assertFalse(lines_ok(b"x" * 999))
        self.assertEqual(crlf_bytes(b"a\rb\nc\r\n"), b"a\r\nb\r\nc\r\n")
