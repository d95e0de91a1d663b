"""
The relay processor's batches (emaild.inbound.store.process_rows with
RelayProcessor._work): a batch of posts costs a few statements whatever its
size, posts earlier in a batch count for the ones after them, a post that
cannot be read holds back only itself, and a crash still redoes each row's
work exactly once.
"""

from __future__ import annotations

import time

import psycopg2

from emaild.db.database import DatabaseUnavailable
from emaild.inbound import reading
from emaild.inbound.store import process_rows
from tests.inbound.test_inbound_relay import REAL, RelayTestCase, mail, parse


class CountingCursor:
    """A cursor that counts the statements sent through it."""

    def __init__(self, cursor):
        self.cursor = cursor
        self.statements = 0

    def execute(self, *args, **kwargs):
        self.statements += 1
        return self.cursor.execute(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.cursor, name)


class BatchTests(RelayTestCase):
    async def posts(self, n: int, **headers) -> list[int]:
        self.handler.max_posts_per_hour = 0  # one member posts them all
        return [await self.receive("ada", mail("ada@example.org", self.reply["ada"],
                                               f"Post {i}", f"body {i}", **headers))
                for i in range(n)]

    async def test_a_batch_costs_a_few_statements_whatever_its_size(self):
        counted = []
        processor = self.bare_processor()

        async def work(cursor, batch):
            counting = CountingCursor(cursor)
            try:
                return await processor._work(counting, batch)
            finally:
                counted.append((len(batch), counting.statements))

        for n in (1, 40):
            ids = await self.posts(n)
            results, _ = await process_rows(self.inbound, work, limit=64, max_attempts=3)
            self.assertEqual([o.state for _, o in results], ["done"] * n)
            self.assertEqual([p.message_id for p, _ in results], ids)
        self.assertEqual([n for n, _ in counted], [1, 40])
        # the same statements for 40 posts as for one (three per post before)
        self.assertEqual(counted[0][1], counted[1][1])
        self.assertLessEqual(counted[1][1], 8)
        self.assertEqual(self.query("SELECT count(*) FROM outbox")[0][0], 82)
        self.assertEqual(self.query("SELECT count(*) FROM group_posts")[0][0], 41)
        self.assertEqual(self.query("SELECT count(DISTINCT batch) FROM outbox")[0][0], 41)

    async def test_posts_earlier_in_the_batch_count_for_later_ones(self):
        raw = mail("ada@example.org", self.reply["ada"], "Hello", "first",
                   Message_ID="<first@mail.example.org>")
        first = await self.receive("ada", raw)
        again = await self.receive("ada", raw)  # the same post delivered twice
        reply = await self.receive("bob", mail(
            "bob@example.net", self.reply["bob"], "Re: Hello", "a reply",
            In_Reply_To="<first@mail.example.org>"))
        processor = self.bare_processor()
        results, _ = await process_rows(self.inbound, processor._work, limit=64,
                                        max_attempts=3)
        self.assertEqual([p.message_id for p, _ in results], [first, again, reply])
        self.assertEqual([o.state for _, o in results], ["done", "ignored", "done"])
        self.assertIn("delivered twice", results[1][1].reason)
        ((post_id, thread_id, ours),) = self.query(
            "SELECT p.id, p.thread_id, p.message_id FROM group_posts p"
            " JOIN inbound_recipients r ON r.id = p.inbound_id WHERE r.message_id = %s",
            (first,))
        ((reply_thread,),) = self.query(
            "SELECT p.thread_id FROM group_posts p JOIN inbound_recipients r"
            " ON r.id = p.inbound_id WHERE r.message_id = %s", (reply,))
        self.assertIsNone(thread_id)
        self.assertEqual(reply_thread, post_id)
        for _, body in self.copies(reply):
            self.assertEqual(parse(body)["In-Reply-To"], ours)

    async def test_a_post_relied_on_but_not_made_redoes_the_batch_row_by_row(self):
        raw = mail("ada@example.org", self.reply["ada"], "Hello", "x",
                   Message_ID="<twice@mail.example.org>")
        first, again = await self.receive("ada", raw), await self.receive("ada", raw)
        # as if another process had relayed the first one to everybody
        for person in ("bob", "carol"):
            self.query("INSERT INTO group_relayed_copies (message_id, group_id, person_id)"
                       " VALUES (%s, %s, %s)", (first, self.group_id, self.ids[person]))
        processor = self.bare_processor()
        results, _ = await process_rows(self.inbound, processor._work, limit=64,
                                        max_attempts=3)
        self.assertEqual([(p.message_id, o.state) for p, o in results],
                         [(first, "ignored"), (again, "done")])
        self.assertIn("already had a copy", results[0][1].reason)
        self.assertEqual(sorted(r for r, _ in self.copies(again)),
                         ["bob@example.net", "carol@example.com"])

    async def test_an_unreadable_post_holds_back_only_itself(self):
        ids = await self.posts(3)
        real_read_post = reading.read_post

        def read_post(item, members):
            if b"Post 1" in item.raw:
                raise ValueError("cannot read this one")
            return real_read_post(item, members)

        self.patch(reading, "read_post", read_post)
        processor = self.bare_processor()
        statements = []

        async def work(cursor, batch):
            statements.append(len(batch))
            return await processor._work(cursor, batch)

        for attempt in (1, 2, 3):
            results, _ = await process_rows(self.inbound, work, limit=64, max_attempts=3)
            self.assertEqual([o.state for _, o in results],
                             ["done", "retry", "done"] if attempt == 1
                             else ["failed"] if attempt == 3 else ["retry"])
            self.assertIn("cannot read this one", results[-2 if attempt == 1 else 0][1].reason)
        self.assertEqual(statements, [3, 1, 1])  # in its batch each time: no row-by-row redo
        self.assertEqual([s for i in ids for s, _ in self.states(i)],
                         ["done", "failed", "done"])
        self.assertEqual(self.query("SELECT attempts FROM inbound_recipients"
                                    " WHERE message_id = %s", (ids[1],)), [(3,)])
        self.flushLoggedErrors(ValueError)

    async def test_a_crash_before_commit_redoes_every_row_exactly_once(self):
        ids = await self.posts(5)
        processor = self.bare_processor()
        runs = []

        async def work_then_die(cursor, batch):
            runs.append(len(batch))
            await processor._work(cursor, batch)  # every copy queued…
            raise psycopg2.OperationalError("server closed the connection")  # …then lost

        with self.assertRaises(DatabaseUnavailable):
            await process_rows(self.inbound, work_then_die, limit=64, max_attempts=3)
        self.assertEqual(runs, [5, 5])  # lost before COMMIT: run once more, to no avail
        self.assertEqual(self.query("SELECT count(*) FROM outbox")[0][0], 0)
        self.assertEqual(self.query("SELECT count(*) FROM group_relayed_copies")[0][0], 0)
        self.assertEqual([s for i in ids for s, _ in self.states(i)], ["received"] * 5)

        results, _ = await process_rows(self.inbound, processor._work, limit=64,
                                        max_attempts=3)
        self.assertEqual([o.state for _, o in results], ["done"] * 5)
        self.assertEqual(self.query("SELECT recipient, count(*) FROM outbox GROUP BY 1"
                                    " ORDER BY 1"), [(REAL[1], 5), (REAL[2], 5)])

    async def test_a_full_batch_says_how_many_rows_wait(self):
        await self.posts(5)
        processor = self.bare_processor()
        results, waiting = await process_rows(self.inbound, processor._work, limit=2,
                                              max_attempts=3)
        self.assertEqual((len(results), waiting), (2, 5))
        results, waiting = await process_rows(self.inbound, processor._work, limit=64,
                                              max_attempts=3)
        self.assertEqual((len(results), waiting), (3, 3))

    async def test_a_batch_reads_only_the_posts_within_its_copy_budget(self):
        ids = await self.posts(6)
        real_read_post = reading.read_post
        read = []

        def read_post(item, members):
            read.append(item.raw)
            return real_read_post(item, members)

        self.patch(reading, "read_post", read_post)
        processor = self.bare_processor()
        processor.max_copies = 3  # each post is two copies
        results, _ = await process_rows(self.inbound, processor._work, limit=64,
                                        max_attempts=3)
        self.assertEqual([p.message_id for p, _ in results], ids[:2])
        self.assertEqual(len(read), 2)  # not all six, to take two
        self.assertEqual([s for i in ids for s, _ in self.states(i)],
                         ["done"] * 2 + ["received"] * 4)

    async def test_unsubscribe_links_are_minted_once_while_they_stay_fresh(self):
        processor = self.bare_processor()
        links = processor.links
        minted = []
        real_mint_many = links.mint_many

        async def mint_many(requests):
            minted.append(len(requests))
            return await real_mint_many(requests)

        self.patch(links, "mint_many", mint_many)
        for _ in range(2):
            await self.posts(2)
            await process_rows(self.inbound, processor._work, limit=64, max_attempts=3)
        self.assertEqual(minted, [2])  # bob's and carol's, for both batches
        # a link past half its lifetime is not handed out again
        ttl = links.ttl["unsubscribe"]
        self.patch(links, "clock", lambda: time.time() + ttl * 0.6)
        await self.posts(1)
        await process_rows(self.inbound, processor._work, limit=64, max_attempts=3)
        self.assertEqual(minted, [2, 2])
        tokens = {parse(body)["List-Unsubscribe"] for _, body in
                  self.query("SELECT recipient, body FROM outbox ORDER BY id")}
        self.assertEqual(len(tokens), 4)  # two per member: before and after


class DrainTests(RelayTestCase):
    """When the processor looks for more rows, and when it waits to be woken."""

    posts = BatchTests.posts

    async def test_no_empty_batch_after_one_that_took_every_row(self):
        await self.posts(3)
        taken = []
        processor = self.bare_processor()
        work = processor._work

        async def counting(cursor, batch):
            taken.append(len(batch))
            return await work(cursor, batch)

        processor._work = counting
        processor.batch_rows = 2
        processor.running = True
        processor.listening = True  # as once LISTEN is set up
        claims = []
        real = self.inbound.db.transaction

        def transaction(fn, *args, **kwargs):
            if fn.__name__ == "_rows_txn":  # not the unsubscribe links' own
                claims.append(fn)
            return real(fn, *args, **kwargs)

        self.patch(self.inbound.db, "transaction", transaction)
        await processor._drain()
        # a full batch (more may wait: look again), then the last row: it
        # took all that waited, so no third transaction finds nothing
        self.assertEqual(taken, [2, 1])
        self.assertEqual(len(claims), 2)
        self.assertEqual(self.query("SELECT count(*) FROM inbound_recipients"
                                    " WHERE state = 'done'")[0][0], 3)
        # until LISTEN is set up, nothing would wake it: it looks until a
        # batch finds nothing
        await self.posts(1)
        processor.listening = False
        claims.clear()
        await processor._drain()
        self.assertEqual(len(claims), 2)

    async def test_a_post_stored_during_a_batch_is_relayed_without_the_poll(self):
        processor = self.bare_processor()
        processor.poll_interval = 3600  # only its first tick, at start: no rescue by polling
        work = processor._work
        stored = []

        async def storing_meanwhile(cursor, batch):
            if not stored:  # a post committed while the first batch is in hand
                stored.append(await self.receive("bob", mail(
                    "bob@example.net", self.reply["bob"], "Meanwhile", "stored during a batch")))
            return await work(cursor, batch)

        processor._work = storing_meanwhile
        processor.startService()
        self.addCleanup(processor.stopService)
        await processor.starting
        self.assertTrue(processor.listening)
        first = (await self.posts(1))[0]  # its NOTIFY wakes the processor
        (state,) = await self.processed(first)
        self.assertEqual(state[0], "done")
        (state,) = await self.processed(stored[0])  # woken by its NOTIFY
        self.assertEqual(state[0], "done")


class CopyTextsTests(RelayTestCase):
    """What each copy needs that is not the post: unsubscribe link, bounce address."""

    async def test_a_members_link_is_encoded_once_for_all_their_copies(self):
        self.handler.max_posts_per_hour = 0
        encoded = []
        codec = self.outbox.links.codec
        real = codec.encode

        def counting(parts):
            encoded.append(parts)
            return real(parts)

        self.patch(codec, "encode", counting)
        processor = self.bare_processor()
        ids = []
        for round_ in range(2):  # two batches: the links are kept between them
            ids += [await self.receive("ada", mail("ada@example.org", self.reply["ada"],
                                                   f"Post {round_}.{i}", "body"))
                    for i in range(3)]
            results, _ = await process_rows(self.inbound, processor._work, limit=64,
                                            max_attempts=3)
            self.assertEqual([o.state for _, o in results], ["done"] * 3)
        # bob's and carol's links, once each, for 12 copies
        self.assertEqual(len(encoded), 2)
        for message_id in ids:
            for recipient, body in self.copies(message_id):
                link = self.outbox.links
                kept = processor.copies.links_kept
                row = kept[(self.ids[recipient.split("@")[0]], next(iter({t for _, t in kept})))]
                url, token = link.url(row), link.token(row)
                self.assertEqual(link.url_and_token(row), (url, token))
                message = parse(body)
                self.assertEqual(message["List-Unsubscribe"],
                                 f"<{url}>, <mailto:unsubscribe+{token}@"
                                 f"{self.cfg['smtp']['relay_domain']}>")

    async def test_every_copy_has_its_own_random_bounce_address(self):
        self.handler.max_posts_per_hour = 0
        for i in range(20):
            await self.receive("ada", mail("ada@example.org", self.reply["ada"], f"P {i}", "b"))
        processor = self.bare_processor()
        results, _ = await process_rows(self.inbound, processor._work, limit=64, max_attempts=3)
        self.assertEqual([o.state for _, o in results], ["done"] * 20)
        senders = [s for (s,) in self.query("SELECT envelope_from FROM outbox")]
        self.assertEqual(len(senders), 40)
        domain = self.cfg["smtp"]["relay_domain"]
        tokens = [s.removeprefix("bounces+").removesuffix(f"@{domain}") for s in senders]
        self.assertTrue(all(len(t) == 20 and int(t, 16) >= 0 for t in tokens), tokens)
        self.assertEqual(len(set(tokens)), 40)
        # 20 hex digits from the system's randomness each: no two share a half
        self.assertEqual(len({t[:10] for t in tokens}), 40)
