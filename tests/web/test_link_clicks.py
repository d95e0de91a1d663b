"""
Clicks written together (emaild.links.clicks) against a real database: the
clicks that arrive while a statement is in flight share the next one, and
each still gets exactly the answer, the use count and the session it would
get alone; and the fast path that serves C{GET /email/<token>} without Klein.
"""

from __future__ import annotations

import functools
import time

from psycopg2.errors import DeadlockDetected
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from emaild.db.database import DatabaseUnavailable
from emaild.links.clicks import DEADLOCK_RETRIES, ClickBatcher
from emaild.links.service import LOGIN
from emaild.links.tokens import TokenParts
from emaild.web.sessions import NewSession, SessionStore
from tests.webtest import WebTestCase


def async_test(f):
    @functools.wraps(f)
    def wrapper(self):
        return defer.ensureDeferred(f(self))
    return wrapper


class StatementsStore:
    """
    A link store whose statements stay in flight until the test commits
    them: C{statements} lists each one's clicks.
    """

    def __init__(self):
        self.statements: list[list[TokenParts]] = []
        self.pending: list[defer.Deferred] = []

    def use_many(self, clicks, purpose, now, also=("", {}), durable=True):
        self.statements.append(list(clicks))
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d

    def commit(self, k: int) -> None:
        clicks = self.statements[k]
        self.pending[k].callback([(None, True)] * len(clicks))


class BatchPolicyTests(unittest.TestCase):
    """When a batch's statement starts (a Clock as the reactor)."""

    def setUp(self):
        self.clock, self.store = Clock(), StatementsStore()
        self.batcher = ClickBatcher(self.store, LOGIN, reactor=self.clock, in_flight=2)

    def click(self, n: int) -> defer.Deferred:
        return self.batcher.use(TokenParts(n, 1, 2))

    def test_a_lone_click_goes_at_the_end_of_its_reactor_turn(self):
        answer = self.click(1)
        self.assertEqual(self.store.statements, [], "not before the turn ends")
        self.clock.advance(0)  # the end of the turn: no time passes
        self.assertEqual(self.store.statements, [[TokenParts(1, 1, 2)]])
        self.assertNoResult(answer)
        self.store.commit(0)
        self.assertEqual(self.successResultOf(answer), (None, True))

    def test_the_clicks_of_one_turn_share_one_statement(self):
        # (a click going at once would leave the others a statement of
        # their own: two where one does)
        answers = [self.click(n) for n in range(1, 6)]
        self.clock.advance(0)
        self.assertEqual([len(s) for s in self.store.statements], [5])
        self.store.commit(0)
        self.assertEqual([self.successResultOf(d)[1] for d in answers], [True] * 5)

    def test_clicks_wait_while_both_statements_are_in_flight_then_go_at_once(self):
        self.click(1)
        self.clock.advance(0)
        self.click(2)
        self.clock.advance(0)
        waiting = [self.click(n) for n in range(3, 7)]
        self.clock.advance(0)
        self.assertEqual([len(s) for s in self.store.statements], [1, 1])
        self.store.commit(0)  # the waiting clicks go before its answers
        self.assertEqual([len(s) for s in self.store.statements], [1, 1, 4])
        self.store.commit(2)
        self.assertEqual([self.successResultOf(d)[1] for d in waiting], [True] * 4)

    def test_a_batch_holds_at_most_max_batch_clicks(self):
        self.batcher.batches.max_items = 3
        for n in range(1, 9):
            self.click(n)
        self.clock.advance(0)
        self.assertEqual([len(s) for s in self.store.statements], [3, 3])
        self.store.commit(0)
        self.assertEqual([len(s) for s in self.store.statements], [3, 3, 2])


class ClickBatchTests(WebTestCase):
    async def link_of(self, person, purpose=LOGIN, target="/home"):
        url = await self.web.links.mint(person.id, purpose, target)
        token = url.rsplit("/", 1)[-1]
        return token, await self.web.links.store.get(self.web.links.codec.decode(token).link_id)

    def count_queries(self) -> list:
        calls = []
        for method in ("runQuery", "run_prepared"):
            original = getattr(self.db, method)

            def counted(*args, original=original, **kwargs):
                calls.append(args[0])
                return original(*args, **kwargs)

            setattr(self.db, method, counted)
        return calls

    @async_test
    async def test_clicks_that_arrive_together_share_one_statement(self):
        await self.start_web()
        links, codec = self.web.links, self.web.links.codec
        people = self.web.people
        ada, bob = await people.add("ada@example.org", "Ada"), await people.add("bob@example.org", "Bob")
        carol = await people.add("carol@example.org", "Carol")
        ada_token, ada_link = await self.link_of(ada)
        bob_token, _ = await self.link_of(bob)
        carol_token, _ = await self.link_of(carol)
        unsubscribe_token, _ = await self.link_of(ada, "unsubscribe", "all")
        self.query("UPDATE links SET expires_at = now() - interval '1 second'"
                   " WHERE person_id = %s", (bob.id,))
        store, now = self.web.sessions.store, time.time()
        _, kept = await store.create(ada.id, now, 3600, None)
        _, replaced = await store.create(ada.id, now, 3600, None)
        wrong_secret = codec.encode(
            TokenParts(ada_link.id, ada_link.secret_hi, ada_link.secret_lo ^ 1))
        huge_secret = codec.encode(TokenParts(ada_link.id, 2 ** 70, 1))
        clicks = [
            ("carol, alone", carol_token, None, "ok"),
            ("carol again, alone", carol_token, None, "ok"),
            ("ada", ada_token, replaced.id, "ok"),
            ("ada again", ada_token, None, "ok"),
            ("bob, expired", bob_token, kept.id, "expired"),
            ("ada's row, wrong secret", wrong_secret, kept.id, "unknown"),
            ("ada's row, a secret beyond bigint", huge_secret, kept.id, "unknown"),
            ("an unsubscribe link", unsubscribe_token, kept.id, "unknown"),
            ("no such row", codec.encode(TokenParts(ada_link.id + 1000, 1, 2)), kept.id,
             "unknown"),
        ]
        news = [NewSession.make(now, 3600, replaces) for _, _, replaces, _ in clicks]
        queries = self.count_queries()
        # all arrive in one turn of the reactor: one statement
        answers = [defer.ensureDeferred(
                       links.use_batched(token, LOGIN, new, SessionStore.start_many_ctes))
                   for (_, token, _, _), new in zip(clicks, news)]
        results = [await d for d in answers]
        self.assertEqual(len(queries), 1, "the clicks of one reactor turn go together")
        for (what, _, _, expected), result in zip(clicks, results):
            self.assertEqual(result.status, expected, what)
        self.assertEqual([r.link.person_id for r in results if r.status == "ok"],
                         [carol.id, carol.id, ada.id, ada.id])
        self.assertEqual(self.query("SELECT person_id, uses FROM links WHERE purpose = 'login'"
                                    " ORDER BY person_id"),
                         [(ada.id, 2), (bob.id, 0), (carol.id, 2)])
        self.assertEqual(self.query("SELECT uses FROM links WHERE purpose = 'unsubscribe'"),
                         [(0,)])
        started = {row[0]: row[1] for row in self.query(
            "SELECT id, person_id FROM web_sessions WHERE id <> ALL(%s)", ([kept.id, replaced.id],))}
        self.assertEqual(started, {news[0].id: carol.id, news[1].id: carol.id,
                                   news[2].id: ada.id, news[3].id: ada.id})
        self.assertEqual(self.query(
            "SELECT id, revoked_at IS NOT NULL FROM web_sessions WHERE id = ANY(%s) ORDER BY id",
            ([kept.id, replaced.id],)), sorted([(kept.id, False), (replaced.id, True)]))

    @async_test
    async def test_a_failed_statement_fails_each_of_its_clicks_and_the_next_one_runs(self):
        await self.start_web()
        people = self.web.people
        ada = await people.add("ada@example.org", "Ada")
        token, _ = await self.link_of(ada)
        use_many = self.web.links.store.use_many

        async def down(*args):
            raise DatabaseUnavailable("connection refused")

        self.web.links.store.use_many = down
        for _ in range(2):  # one at a time
            with self.assertRaises(DatabaseUnavailable):
                await self.web.links.use_batched(token, LOGIN)
        answers = [defer.ensureDeferred(self.web.links.use_batched(token, LOGIN))
                   for _ in range(3)]
        for d in answers:
            with self.assertRaises(DatabaseUnavailable):
                await d
        self.web.links.store.use_many = use_many
        result = await self.web.links.use_batched(token, LOGIN)
        self.assertEqual(result.status, "ok")
        self.assertEqual(self.query("SELECT uses FROM links"), [(1,)])


class FastPathTests(WebTestCase):
    @async_test
    async def test_an_unexpected_error_is_the_500_page(self):
        await self.start_web()
        ada = await self.web.people.add("ada@example.org", "Ada")
        url = await self.web.links.login_url(ada.id)

        async def broken(*args, **kwargs):
            raise RuntimeError("a bug")

        self.web.links.use_batched = broken
        response, body = await self.client().get("/email/" + url.rsplit("/", 1)[-1])
        self.assertEqual(response.code, 500)
        self.assertEqual(response.headers.getRawHeaders("referrer-policy"), ["no-referrer"])
        self.assertNotIn("Traceback", body)
        self.assertNotIn("a bug", body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @async_test
    async def test_a_click_answers_with_the_same_headers_as_before(self):
        await self.start_web()
        ada = await self.web.people.add("ada@example.org", "Ada")
        url = await self.web.links.login_url(ada.id, "/home")
        response, _ = await self.client().get("/email/" + url.rsplit("/", 1)[-1])
        self.assertEqual(response.code, 303)
        headers = response.headers
        self.assertEqual(headers.getRawHeaders("location"), [self.base + "/home"])
        self.assertEqual(headers.getRawHeaders("referrer-policy"), ["no-referrer"])
        self.assertEqual(headers.getRawHeaders("cache-control"), ["no-store"])
        self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        self.assertTrue(headers.getRawHeaders("content-security-policy"))
        (cookie,) = headers.getRawHeaders("set-cookie")
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=Lax", cookie)


class DeadlockTests(WebTestCase):
    @async_test
    async def test_a_batch_aborted_by_a_deadlock_runs_again(self):
        # PostgreSQL rolls the aborted statement back: running it again
        # counts each click once
        await self.start_web()
        ada = await self.web.people.add("ada@example.org", "Ada")
        token = (await self.web.links.login_url(ada.id)).rsplit("/", 1)[-1]
        use_many, aborted = self.web.links.store.use_many, []

        async def deadlocked_once(*args):
            if not aborted:
                aborted.append(True)
                raise DeadlockDetected("deadlock detected")
            return await use_many(*args)

        self.web.links.store.use_many = deadlocked_once
        result = await self.web.links.use_batched(token, LOGIN)
        self.assertEqual((result.status, aborted), ("ok", [True]))
        self.assertEqual(self.query("SELECT uses FROM links"), [(1,)])

    @async_test
    async def test_a_batch_that_keeps_deadlocking_fails(self):
        await self.start_web()
        ada = await self.web.people.add("ada@example.org", "Ada")
        token = (await self.web.links.login_url(ada.id)).rsplit("/", 1)[-1]
        attempts = []

        async def deadlocked(*args):
            attempts.append(True)
            raise DeadlockDetected("deadlock detected")

        self.web.links.store.use_many = deadlocked
        with self.assertRaises(DeadlockDetected):
            await self.web.links.use_batched(token, LOGIN)
        self.assertEqual(len(attempts), 1 + DEADLOCK_RETRIES)

    @async_test
    async def test_overlapping_batches_in_flight_count_every_click(self):
        # two statements in flight, each touching the same rows in another
        # order: every click is answered and counted exactly once
        await self.start_web()
        tokens = []
        for i in range(3):
            person = await self.web.people.add(f"p{i}@example.org", f"P{i}")
            tokens.append((await self.web.links.login_url(person.id)).rsplit("/", 1)[-1])
        batcher = ClickBatcher(self.web.links.store, LOGIN, max_batch=5, in_flight=2)
        codec = self.web.links.codec
        order = [tokens[k % 3] if (k // 5) % 2 else tokens[2 - k % 3] for k in range(120)]
        answers = [batcher.use(codec.decode(token)) for token in order]
        results = await defer.gatherResults(answers)
        self.assertEqual([used for _, used in results], [True] * 120)
        self.assertEqual(self.query("SELECT uses FROM links ORDER BY id"), [(40,)] * 3)


class SignInCommitTests(WebTestCase):
    """
    A click's sign-in commits without waiting for the disk (see
    L{emaild.web.routes_links.SIGN_IN_DURABLE}), and only its own
    transaction does: every other statement on the same pooled connection
    still waits for its WAL to be flushed.
    """

    pool_size = 1  # every statement of the test on one backend

    async def wal_fsyncs(self) -> int:
        # the backend's own WAL fsyncs (PostgreSQL 18's per-backend I/O
        # statistics); its counters reach shared memory when it goes idle
        # after a statement that forced it
        await self.db.runQuery("SELECT pg_stat_force_next_flush()")
        rows = await self.db.runQuery(
            "SELECT coalesce(sum(fsyncs), 0)::int FROM pg_stat_get_backend_io(pg_backend_pid())"
            " WHERE object = 'wal'")
        return rows[0][0]

    @async_test
    async def test_a_click_does_not_wait_for_the_wal_flush_and_nothing_else_changes(self):
        await self.start_web()
        ada = await self.web.people.add("ada@example.org", "Ada")
        path = "/email/" + (await self.web.links.login_url(ada.id)).rsplit("/", 1)[-1]
        browser = self.client()
        before = await self.wal_fsyncs()
        for _ in range(5):
            response, _ = await browser.get(path)
            self.assertEqual(response.code, 303)
        self.assertEqual(await self.wal_fsyncs() - before, 0,
                         "a click's commit waited for the disk")
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions"
                                    " WHERE revoked_at IS NULL"), [(1,)])
        self.assertEqual(self.query("SELECT uses FROM links"), [(5,)])
        # the connection is left as it was: a session written any other
        # way (and every other part's write) still waits for the disk
        self.assertEqual(await self.db.runQuery("SHOW synchronous_commit"), [("on",)])
        before = await self.wal_fsyncs()
        await self.web.sessions.store.insert(ada.id, NewSession.make(time.time(), 3600, None))
        self.assertGreaterEqual(await self.wal_fsyncs() - before, 1)

    @async_test
    async def test_a_durable_batch_waits_for_the_wal_flush(self):
        # the store's default, for any caller that needs it
        await self.start_web()
        ada = await self.web.people.add("ada@example.org", "Ada")
        token = (await self.web.links.login_url(ada.id)).rsplit("/", 1)[-1]
        before = await self.wal_fsyncs()
        result = await self.web.links.use_batched(token, LOGIN)
        self.assertEqual(result.status, "ok")
        self.assertGreaterEqual(await self.wal_fsyncs() - before, 1)
