"""
Groups: reply addresses (encode, parse, refuse anything altered) and the
membership rules behind them (leaving kills an address, rejoining makes a
new one).
"""

from twisted.trial import unittest

from emaild.groups.addresses import ReplyAddresses, ReplyToken, reply_addresses
from emaild.groups.store import GroupStore
from emaild.people.store import PeopleStore
from tests.support import DatabaseTestCase


class ReplyAddressTests(unittest.TestCase):
    codec = ReplyAddresses("salt", "relay.example.org", "group")

    def test_round_trip_and_case_folding(self):
        token = ReplyToken(7, 42, 2**32 - 1, 0)
        address = self.codec.address(token)
        local, domain = address.split("@")
        self.assertEqual(domain, "relay.example.org")
        self.assertTrue(local.startswith("group-"))
        self.assertEqual(local, local.lower())
        self.assertEqual(self.codec.parse(address), token)
        self.assertEqual(self.codec.parse(address.upper()), token)

    def test_anything_else_is_refused(self):
        address = self.codec.address(ReplyToken(1, 2, 3, 4))
        local, domain = address.split("@")
        encoded = local.split("-", 1)[1]
        for bad in [f"{local}@other.example.org", f"list-{encoded}@{domain}",
                    f"group-{encoded[:-1]}@{domain}", f"group-{encoded}x@{domain}",
                    f"group-{encoded[::-1]}@{domain}", f"group-@{domain}", f"group@{domain}",
                    f"group-{encoded}", "", "@", f"group-{'a' * 200}@{domain}",
                    f"group-{encoded}!@{domain}"]:
            self.assertIsNone(self.codec.parse(bad), bad)

    def test_other_salt_other_address(self):
        token = ReplyToken(1, 2, 3, 4)
        other = ReplyAddresses("pepper", "relay.example.org")
        self.assertNotEqual(other.address(token), self.codec.address(token))
        self.assertNotEqual(other.parse(self.codec.address(token)), token)

    def test_answers_are_remembered_and_unchanged(self):
        import random

        from hashids import Hashids

        from emaild.groups import addresses

        calls = []

        class Counting(Hashids):
            def encode(self, *numbers):
                calls.append("encode")
                return super().encode(*numbers)

            def decode(self, hashid):
                calls.append("decode")
                return super().decode(hashid)

        self.patch(addresses, "Hashids", Counting)
        codec = ReplyAddresses("salt", "relay.example.org", "group")
        rng = random.Random(7)
        tokens = [ReplyToken(rng.randrange(1, 10**6), rng.randrange(1, 10**9),
                             rng.getrandbits(32), rng.getrandbits(32)) for _ in range(200)]
        for token in tokens:
            # the same answers as without remembering (the shared codec)
            self.assertEqual(codec.address(token), self.codec.address(token))
            self.assertEqual(codec.parse(codec.address(token)), token)
            self.assertIsNone(codec.parse(codec.address(token).replace("-", "-x", 1)))
        first = len(calls)
        for token in tokens:  # again: nothing is encoded or decoded twice
            self.assertEqual(codec.parse(codec.address(token)), token)
            self.assertIsNone(codec.parse(codec.address(token).replace("-", "-x", 1)))
        self.assertEqual(len(calls), first)

    def test_from_config(self):
        from tests.support import make_config

        token = ReplyToken(1, 2, 3, 4)
        config = make_config(self.mktemp(), smtp={"relay_domain": "Relay.Example.org"},
                             links={"salt": "s1"}, groups={"address_prefix": "team"})
        codec = reply_addresses(config)
        self.assertEqual(codec.address(token),
                         ReplyAddresses("s1/reply", "relay.example.org", "team").address(token))
        self.assertTrue(codec.address(token).startswith("team-"))
        salted = make_config(self.mktemp(), links={"salt": "s1"},
                             groups={"address_salt": "own"})
        self.assertEqual(reply_addresses(salted).address(token),
                         ReplyAddresses("own", "localhost").address(token))


class MembershipTests(DatabaseTestCase):
    async def _group_with(self, *names):
        people, groups = PeopleStore(self.db), GroupStore(self.db)
        course = await people.ensure_course("", "c1", "Course One")
        group_id = await people.ensure_group(course, "Team A")
        ids = []
        for name in names:
            person = await people.add(f"{name.lower()}@example.org", name)
            await people.join_group(group_id, person.id)
            ids.append(person.id)
        return people, groups, group_id, ids

    async def test_members_have_secret_tokens_and_leaving_keeps_the_row(self):
        people, groups, gid, (ada, bob) = await self._group_with("Ada", "Bob")
        members = await groups.members(gid)
        self.assertEqual([m.display_name for m in members], ["Ada", "Bob"])
        a, b = members
        self.assertNotEqual((a.secret_hi, a.secret_lo), (b.secret_hi, b.secret_lo))
        self.assertTrue(0 <= a.secret_hi < 2**32 and 0 <= a.secret_lo < 2**32)
        self.assertEqual(await groups.by_token(a.token), a)
        forged = ReplyToken(gid, ada, a.secret_hi, a.secret_lo ^ 1)
        self.assertIsNone(await groups.by_token(forged))

        self.assertTrue(await groups.leave(gid, ada))
        self.assertFalse(await groups.leave(gid, ada))
        left = await groups.by_token(a.token)
        self.assertFalse(left.live)
        self.assertEqual([m.person_id for m in await groups.members(gid)], [bob])
        ((group, count),) = await groups.list()
        self.assertEqual((group.name, group.course_title, count), ("Team A", "Course One", 1))

    async def test_rejoining_makes_a_new_address(self):
        people, groups, gid, (ada,) = await self._group_with("Ada")
        (before,) = await groups.members(gid)
        await groups.leave(gid, ada)
        await people.join_group(gid, ada)
        (after,) = await groups.members(gid)
        self.assertTrue(after.live)
        self.assertNotEqual(after.token, before.token)
        self.assertIsNone(await groups.by_token(before.token))
        # joining again while a member changes nothing
        await people.join_group(gid, ada)
        self.assertEqual((await groups.members(gid))[0].token, after.token)


class FindPostsTests(DatabaseTestCase):
    """The posts a message cites, found by index whatever the group's history."""

    async def _group_with_posts(self, n: int) -> int:
        people = PeopleStore(self.db)
        course = await people.ensure_course("", "c1", "Course One")
        group_id = await people.ensure_group(course, "Team A")
        for first, last in ((1, min(n, 20)), (21, n)):
            await self.db.runOperation(
                "INSERT INTO group_posts (group_id, message_id, original_message_id)"
                " SELECT %s, '<ours' || i || '@relay.test>', '<theirs' || i || '@example.org>'"
                " FROM generate_series(%s, %s) AS i", (group_id, first, last))
            if first == 1:
                # what autovacuum last saw: a group with a handful of posts
                # (as in a new deployment)
                await self.db.runOperation("ANALYZE group_posts")
        return group_id

    async def test_cited_posts_by_either_id(self):
        from emaild.groups.store import find_posts_txn

        group_id = await self._group_with_posts(3)
        found = await self.db.transaction(find_posts_txn, group_id, [
            "<ours1@relay.test>", "<theirs2@example.org>", "<unknown@example.org>"])
        self.assertEqual(set(found), {"<ours1@relay.test>", "<theirs1@example.org>",
                                      "<ours2@relay.test>", "<theirs2@example.org>"})
        self.assertEqual(found["<theirs1@example.org>"][2], "<ours1@relay.test>")
        other = await PeopleStore(self.db).ensure_group(
            await PeopleStore(self.db).ensure_course("", "c1", "Course One"), "Team B")
        self.assertEqual(await self.db.transaction(find_posts_txn, other, ["<ours1@relay.test>"]),
                         {})

    async def test_cited_ids_of_any_spelling(self):
        """
        The cited ids go to the database as one array literal: quotes,
        backslashes, commas, braces, spaces and the word NULL in an id
        are matched as themselves, never change the list.
        """
        from emaild.groups.store import find_posts_txn

        group_id = await self._group_with_posts(0)
        awkward = ['<a"b@x>', "<a\\b@x>", "<a,b@x>", "<{a}@x>", "<a b@x>", "NULL", '"',
                   "<\u00e9t\u00e9@x>"]
        for n, message_id in enumerate(awkward):
            await self.db.runOperation(
                "INSERT INTO group_posts (group_id, message_id, original_message_id)"
                " VALUES (%s, %s, %s)", (group_id, f"<ours-{n}@relay.test>", message_id))
        found = await self.db.transaction(find_posts_txn, group_id, awkward + ["<a@x>"])
        self.assertEqual(set(found), set(awkward) | {f"<ours-{n}@relay.test>"
                                                     for n in range(len(awkward))})

    async def test_a_long_history_is_not_read(self):
        """
        Looking up the ids a batch cites reads the posts found, not every
        post of the group (it once did, on every relay batch).
        """
        from emaild.groups.store import find_posts_txn

        group_id = await self._group_with_posts(5000)

        async def read_so_far(cursor) -> int:
            # this session's reads not yet reported (so: since at most a second)
            await cursor.execute(
                "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
                " FROM pg_stat_xact_user_tables WHERE relname = 'group_posts'")
            return cursor.fetchone()[0]

        async def lookup(cursor):
            before = await read_so_far(cursor)
            # what a batch of 40 posts cites: mostly ids we never issued
            found = await find_posts_txn(cursor, group_id, [
                f"<ours{i}@relay.test>" for i in (1, 2500)] + [
                f"<theirs{i}@example.org>" for i in (10, 4000)] + [
                f"<nobody{i}@example.org>" for i in range(36)])
            return found, await read_so_far(cursor) - before

        # PostgreSQL plans a prepared statement for its parameters five
        # times, then may settle on a generic plan: every pooled connection
        # past that point
        for _ in range(8 * self.pool_size):
            found, read = await self.db.transaction(lookup)
            self.assertEqual(len(found), 8)
            self.assertLess(read, 50)
