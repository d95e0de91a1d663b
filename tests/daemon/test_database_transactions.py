"""
A transaction's round trips: BEGIN travels with its first statement, and a
transaction that runs no statement sends nothing, against a real
PostgreSQL.
"""

from __future__ import annotations

import psycopg2

from tests.support import DatabaseTestCase, record_statements


class TransactionRoundTripTests(DatabaseTestCase):
    pool_size = 1  # every call on the same connection

    def setUp(self):
        d = super().setUp()
        # the SQL of every message sent, from when the database is open and migrated
        return d.addCallback(lambda _: setattr(self, "sent", record_statements(self)))

    async def test_begin_goes_with_the_first_statement(self):
        async def work(cursor):
            await cursor.execute("SELECT txid_current()")
            first = cursor.fetchone()[0]
            await cursor.execute("SELECT txid_current()")
            return first, cursor.fetchone()[0]

        first, second = await self.db.transaction(work)
        self.assertEqual(first, second)  # one transaction, not two autocommits
        self.assertEqual(self.sent, ["BEGIN; SELECT txid_current()", "SELECT txid_current()",
                                     "commit"])

    async def test_a_transaction_that_runs_no_statement_sends_nothing(self):
        async def nothing(cursor):
            return "done"

        self.assertEqual(await self.db.transaction(nothing), "done")

        async def refuses(cursor):
            raise ValueError("no")

        with self.assertRaises(ValueError):
            await self.db.transaction(refuses)
        self.assertEqual(self.sent, [])

    async def test_a_failing_first_statement_is_rolled_back(self):
        async def fails(cursor):
            await cursor.execute("SELECT 1/0")

        with self.assertRaises(psycopg2.errors.DivisionByZero):
            await self.db.transaction(fails)
        self.assertEqual(self.sent, ["BEGIN; SELECT 1/0", "rollback"])
        # the connection is not left inside the failed transaction
        self.assertEqual(await self.db.runQuery("SELECT 1"), [(1,)])

    async def test_a_statement_refused_before_sending_leaves_begin_to_the_next(self):
        await self.db.runOperation("CREATE TABLE begin_probe (n integer)")
        del self.sent[:]

        async def work(cursor):
            with self.assertRaises(psycopg2.ProgrammingError):  # cannot adapt: never sent
                await cursor.execute("SELECT %s", (object(),))
            await cursor.execute("INSERT INTO begin_probe VALUES (1)")
            raise ValueError("changed my mind")

        with self.assertRaises(ValueError):
            await self.db.transaction(work)
        # the INSERT ran inside the transaction, so the rollback undid it
        self.assertEqual(self.query("SELECT n FROM begin_probe"), [])
        self.assertEqual(self.sent, ["BEGIN; INSERT INTO begin_probe VALUES (1)", "rollback"])
