"""
RCPT lookups of reply addresses and of their posting-rate counts, several
per query: the same answer as one query per address, in order, and a failed
query fails exactly its own RCPTs.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from emaild.groups.addresses import ReplyToken
from emaild.homeserver import HomeServer
from emaild.inbound.interfaces import Refused
from emaild.inbound.memberlookup import MemberLookups, PostCounts
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
        self.assertIs(hs.get_inbound_handler().post_counts.batches.reactor, reactor)


class FakeInbound:
    def __init__(self):
        self.calls: list[tuple[list, float, defer.Deferred]] = []

    def recent_posts(self, members, *, seconds):
        d: defer.Deferred = defer.Deferred()
        self.calls.append((list(members), seconds, d))
        return d


class PostCountsTests(unittest.TestCase):
    def test_counts_during_a_query_share_the_next_one(self):
        inbound = FakeInbound()
        counts = PostCounts(inbound, seconds=60)
        results: dict[int, object] = {}
        for n in range(1, 4):
            counts.count(1, n, 5).addBoth(lambda r, n=n: results.__setitem__(n, r))
        self.assertEqual([(m, s) for m, s, _ in inbound.calls], [([(1, 1, 5)], 60)])
        inbound.calls[0][2].callback([2])
        self.assertEqual(inbound.calls[1][0], [(1, 2, 5), (1, 3, 5)])
        inbound.calls[1][2].errback(RuntimeError("database down"))
        self.assertEqual(results[1], 2)
        self.assertTrue(results[2].check(RuntimeError) and results[3].check(RuntimeError))
        self.assertEqual(counts.queries, 2)


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


class RecentPostsTests(RelayTestCase):
    async def test_counts_in_order_capped_and_within_the_window(self):
        ada, bob, carol = self.ids["ada"], self.ids["bob"], self.ids["carol"]
        for _ in range(3):
            await self.receive("ada", b"Subject: s\r\n\r\nb\r\n")
        await self.receive("bob", b"Subject: s\r\n\r\nb\r\n")
        self.query("UPDATE inbound_messages SET received_at = received_at - interval '2 hours'"
                   " WHERE id = (SELECT min(id) FROM inbound_messages)")
        g = self.group_id
        counts = await self.inbound.recent_posts(
            [(g, bob, 10), (g, ada, 10), (g, ada, 1), (g, carol, 10), (g + 1, ada, 10),
             (g, bob, 10)], seconds=3600)
        # Ada's oldest post is outside the hour; at most 1 stops at 1
        self.assertEqual(counts, [1, 2, 1, 0, 0, 1])
        self.assertEqual(await self.inbound.recent_posts([], seconds=3600), [])


class CountAlongsideLookupTests(RelayTestCase):
    """The handler asks for the count with the lookup; a count it does not need is dropped."""

    def failing_counts(self):
        def fail(members, *, seconds):
            return defer.fail(RuntimeError("count failed"))
        self.patch(self.inbound, "recent_posts", fail)

    async def test_one_count_query_per_rcpt_of_a_member(self):
        before = self.handler.post_counts.queries
        await self.handler.check_recipient(self.reply["ada"], "ada@example.org")
        self.assertEqual(self.handler.post_counts.queries, before + 1)

    async def test_an_unknown_address_is_550_whatever_its_count(self):
        self.failing_counts()
        [ada] = [m for m in await self.groups.members(self.group_id)
                 if m.person_id == self.ids["ada"]]
        wrong = self.addresses.address(attrs.evolve(ada.token, secret_lo=ada.secret_lo ^ 1))
        with self.assertRaises(Refused) as refused:
            await self.handler.check_recipient(wrong, "ada@example.org")
        self.assertEqual(refused.exception.code, 550)
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])

    async def test_a_member_whose_count_fails_is_not_accepted(self):
        self.failing_counts()
        with self.assertRaises(RuntimeError):
            await self.handler.check_recipient(self.reply["ada"], "ada@example.org")
