"""
RCPT lookups of reply addresses, several per query: the same answer as one
by_token per address, in order, and a failed query fails exactly its own
RCPTs.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer
from twisted.trial import unittest

from emaild.groups.addresses import ReplyToken
from emaild.inbound.memberlookup import MemberLookups
from tests.inbound.test_inbound_relay import RelayTestCase


class FakeGroups:
    def __init__(self):
        self.calls: list[tuple[list, defer.Deferred]] = []

    def by_tokens(self, tokens):
        d: defer.Deferred = defer.Deferred()
        self.calls.append((list(tokens), d))
        return d


def token(n: int) -> ReplyToken:
    return ReplyToken(1, n, 2, 3)


class MemberLookupsTests(unittest.TestCase):
    def setUp(self):
        self.groups = FakeGroups()
        self.lookups = MemberLookups(self.groups, max_tokens=2)
        self.results: dict[int, object] = {}

    def ask(self, n):
        self.lookups.by_token(token(n)).addBoth(lambda r: self.results.__setitem__(n, r))

    def test_lookups_during_a_query_share_the_next_one(self):
        for n in range(1, 5):
            self.ask(n)
        self.assertEqual([t for t, _ in self.groups.calls], [[token(1)]])
        self.groups.calls[0][1].callback(["m1"])
        self.assertEqual(self.groups.calls[1][0], [token(2), token(3)])
        self.groups.calls[1][1].callback([None, "m3"])
        self.groups.calls[2][1].callback(["m4"])
        self.assertEqual(self.results, {1: "m1", 2: None, 3: "m3", 4: "m4"})
        self.assertEqual((self.lookups.queries, self.lookups.tokens), (3, 4))

    def test_a_failed_query_fails_exactly_its_lookups(self):
        self.ask(1)
        self.ask(2)
        self.groups.calls[0][1].errback(RuntimeError("database down"))
        self.assertTrue(self.results[1].check(RuntimeError))
        self.assertNotIn(2, self.results)
        self.groups.calls[1][1].callback(["m2"])
        self.assertEqual(self.results[2], "m2")

    def test_a_wrong_number_of_answers_fails_rather_than_misassigns(self):
        self.ask(1)
        self.groups.calls[0][1].callback([])
        self.assertTrue(self.results[1].check(RuntimeError))


class ByTokensTests(RelayTestCase):
    async def test_the_same_answers_as_one_by_token_each(self):
        await self.groups.leave(self.group_id, self.ids["bob"])
        members = {m.person_id: m for m in await self.groups.members(self.group_id,
                                                                     include_left=True)}
        ada, bob = members[self.ids["ada"]].token, members[self.ids["bob"]].token
        tokens = [bob, attrs.evolve(ada, secret_lo=ada.secret_lo ^ 1), ada,
                  attrs.evolve(ada, person_id=10**9), ada]
        one_each = [await self.groups.by_token(t) for t in tokens]
        together = await self.groups.by_tokens(tokens)
        self.assertEqual(together, one_each)
        self.assertEqual([m is not None for m in together], [True, False, True, False, True])
        self.assertFalse(together[0].live)
