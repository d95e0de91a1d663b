"""
RCPT lookups of reply addresses, several per query: the same answer as one
by_token per address, in order, and a failed query fails exactly its own
RCPTs.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from emaild.groups.addresses import ReplyToken
from emaild.homeserver import HomeServer
from emaild.inbound.memberlookup import MemberLookups
from tests.inbound.test_inbound_relay import RelayTestCase
from tests.support import make_config


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


class TurnBatchingTests(unittest.TestCase):
    """Given the reactor, the RCPTs of one reactor turn share the first query."""

    def test_one_turns_lookups_share_a_query(self):
        clock, groups = Clock(), FakeGroups()
        lookups = MemberLookups(groups, reactor=clock)
        results: dict[int, object] = {}
        for n in range(1, 4):
            lookups.by_token(token(n)).addBoth(lambda r, n=n: results.__setitem__(n, r))
        self.assertEqual(groups.calls, [])  # not before the turn ends
        clock.advance(0)
        self.assertEqual([t for t, _ in groups.calls], [[token(1), token(2), token(3)]])
        lookups.by_token(token(4)).addBoth(lambda r: results.__setitem__(4, r))
        groups.calls[0][1].callback(["m1", None, "m3"])
        # what waited for the query in flight goes when it is done
        self.assertEqual([t for t, _ in groups.calls[1:]], [[token(4)]])
        groups.calls[1][1].callback(["m4"])
        self.assertEqual(results, {1: "m1", 2: None, 3: "m3", 4: "m4"})
        self.assertEqual((lookups.queries, lookups.tokens), (2, 4))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_the_daemons_handler_batches_by_reactor_turn(self):
        hs = HomeServer(make_config(self.mktemp(), "dbname=unused"), reactor)
        self.assertIs(hs.get_inbound_handler().members.batches.reactor, reactor)


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
