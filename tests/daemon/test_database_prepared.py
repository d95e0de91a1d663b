"""
Prepared statements (emaild.db.prepared): checked when they are declared,
prepared once per server session against a real PostgreSQL, kept across a
rolled-back transaction, prepared again after a reconnect, and the same
answers with C{prepared_statements} off.
"""

from __future__ import annotations

import psycopg2
from twisted.trial import unittest

from emaild.db.database import DatabaseUnavailable
from emaild.db.prepared import Statement, Variants
from tests.support import DatabaseTestCase, wait_for

ADD = Statement("test_prepared_add", "SELECT $1::integer + $2::integer, $1::integer")
# a literal %: psycopg2 must not read it as a placeholder, in either mode
LIKE = Statement("test_prepared_like", "SELECT $1::text LIKE '%b%', '100%'")
INSERT = Statement("test_prepared_insert", "INSERT INTO prepared_probe VALUES ($1)")
MINE = Statement("test_prepared_mine",
                 "SELECT count(*) FROM pg_prepared_statements WHERE name = $1")
CONSTANT = Statement("test_prepared_constant", "SELECT 7")
SUICIDE = Statement("test_prepared_suicide", "SELECT pg_terminate_backend(pg_backend_pid())")


class DeclarationTests(unittest.TestCase):
    def test_names_are_unique(self):
        with self.assertRaises(ValueError):
            Statement("test_prepared_add", "SELECT 1")

    def test_name_must_be_an_identifier(self):
        for name in ("", "1st", "has space", "semi;colon", "Upper", "x" * 64):
            with self.assertRaises(ValueError, msg=name):
                Statement(name, "SELECT 1")

    def test_a_skipped_parameter_is_refused(self):
        with self.assertRaises(ValueError):
            Statement("test_prepared_skips", "SELECT $1::int, $3::int")

    def test_wrong_number_of_parameters_is_refused(self):
        with self.assertRaises(TypeError):
            ADD.check((1,))
        with self.assertRaises(TypeError):
            ADD.check((1, 2, 3))

    def test_forms(self):
        self.assertEqual(ADD.arity, 2)
        self.assertEqual(ADD.execute_sql, "EXECUTE test_prepared_add(%s, %s)")
        self.assertEqual(CONSTANT.execute_sql, "EXECUTE test_prepared_constant")
        self.assertEqual(LIKE.plain_sql, "SELECT %(1)s::text LIKE '%%b%%', '100%%'")


class VariantsTests(unittest.TestCase):
    def test_one_statement_per_text(self):
        variants = Variants("test_variants_text")
        sql = "SELECT %(b)s::int, %(a)s::int, %(b)s::int, '5%%'"
        first, values = variants.bind(sql, {"a": 1, "b": 2})
        again, other_values = variants.bind(sql, {"a": 3, "b": 4})
        self.assertIs(first, again)
        self.assertEqual(first.sql, "SELECT $1::int, $2::int, $1::int, '5%'")
        self.assertEqual((values, other_values), ([2, 1], [4, 3]))
        different, _ = variants.bind("SELECT %(a)s::int", {"a": 1})
        self.assertNotEqual(different.name, first.name)

    def test_at_most_limit_texts(self):
        variants = Variants("test_variants_limit", limit=2)
        variants.bind("SELECT 1", {})
        variants.bind("SELECT 2", {})
        variants.bind("SELECT 1", {})  # not a new one
        with self.assertRaises(ValueError):
            variants.bind("SELECT 3", {})


class PreparedTests(DatabaseTestCase):
    pool_size = 1  # every call on the same server session

    async def test_rows_and_nothing(self):
        self.assertEqual(await self.db.run_prepared(ADD, (2, 3)), [(5, 2)])
        self.assertEqual(await self.db.run_prepared(ADD, (10, -3)), [(7, 10)])
        self.assertEqual(await self.db.run_prepared(LIKE, ("abc",)), [(True, "100%")])
        self.assertEqual(await self.db.run_prepared(CONSTANT), [(7,)])
        await self.db.runOperation("CREATE TABLE prepared_probe (n integer)")
        self.assertIsNone(await self.db.run_prepared(INSERT, (4,)))
        self.assertEqual(self.query("SELECT n FROM prepared_probe"), [(4,)])

    async def test_prepared_once_per_session(self):
        for _ in range(3):
            rows = await self.db.run_prepared(MINE, (MINE.name,))
        self.assertEqual(rows, [(1 if self.prepare else 0,)])

    async def test_inside_a_transaction(self):
        async def work(cursor):
            await cursor.execute_prepared(ADD, (1, 1))
            return cursor.fetchall()

        self.assertEqual(await self.db.transaction(work), [(2, 1)])

    async def test_kept_after_a_rolled_back_transaction(self):
        class Undo(Exception):
            pass

        async def work(cursor):
            await cursor.execute_prepared(ADD, (1, 1))
            raise Undo()

        with self.assertRaises(Undo):
            await self.db.transaction(work)
        # the same session: neither "already exists" nor "does not exist"
        self.assertEqual(await self.db.run_prepared(ADD, (1, 2)), [(3, 1)])

    async def test_an_error_in_the_statement_leaves_it_usable(self):
        with self.assertRaises(psycopg2.DataError):
            await self.db.run_prepared(ADD, (2 ** 31 - 1, 1))  # integer out of range
        self.assertEqual(await self.db.run_prepared(ADD, (1, 1)), [(2, 1)])

    async def test_prepared_again_after_a_reconnect(self):
        self.assertEqual(await self.db.run_prepared(ADD, (1, 1)), [(2, 1)])
        self.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                   " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                   " AND application_name = 'emaild'")
        # the first calls may find the dead connection (it reconnects with
        # backoff); then comes a new session
        async def added():
            try:
                return await self.db.run_prepared(ADD, (2, 2))
            except DatabaseUnavailable:
                return None

        self.assertEqual(await wait_for(added, timeout=20), [(4, 2)])
        self.assertEqual(await self.db.run_prepared(MINE, (ADD.name,)),
                         [(1 if self.prepare else 0,)])

    async def test_a_statement_that_reached_the_server_is_not_retried(self):
        # its PREPARE went first, and is not what makes it unsafe to retry
        with self.assertRaises(DatabaseUnavailable):
            await self.db.run_prepared(SUICIDE)
        self.assertEqual(self.db.retried, 0)


class PlainTests(PreparedTests):
    """The same with C{[database] prepared_statements = false}."""

    prepare = False
