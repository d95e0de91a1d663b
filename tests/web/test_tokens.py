"""
Link tokens: the memoised alphabet shuffles (emaild.links.tokens) change
nothing about the tokens hashids makes and accepts.
"""

from __future__ import annotations

import random

import hashids
from twisted.trial import unittest

from emaild.links.tokens import TokenCodec, TokenParts, new_secret


class MemoisedShuffleTests(unittest.TestCase):
    def test_tokens_are_those_of_plain_hashids(self):
        memoised = hashids._reorder
        self.assertTrue(hasattr(memoised, "cache_info"))
        rng = random.Random(7)
        cases = [(salt, TokenParts(rng.randrange(1, 2 ** 40), *new_secret()))
                 for salt in ("one salt", "another salt", "") for _ in range(300)]
        with_memo = [(TokenCodec(salt).encode(parts), salt) for salt, parts in cases]
        try:
            hashids._reorder = memoised.__wrapped__
            plain = [(TokenCodec(salt).encode(parts), salt) for salt, parts in cases]
            plain_decoded = [TokenCodec(salt).decode(token) for token, salt in plain]
        finally:
            hashids._reorder = memoised
        self.assertEqual(with_memo, plain)
        self.assertEqual([TokenCodec(salt).decode(token) for token, salt in with_memo],
                         plain_decoded)
        self.assertEqual(plain_decoded, [parts for _, parts in cases])

    def test_the_memo_stays_small(self):
        codec = TokenCodec("a salt of its own")
        before = hashids._reorder.cache_info().currsize
        for i in range(2000):
            codec.decode(codec.encode(TokenParts(i + 1, *new_secret())))
        # a few hundred shuffles per salt, whatever the number of tokens
        self.assertLess(hashids._reorder.cache_info().currsize - before, 600)
        self.assertLessEqual(hashids._reorder.cache_info().currsize, 4096)
