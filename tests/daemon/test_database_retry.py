"""
When the database layer runs a call a second time: only when the first try
cannot have committed (found dead at checkout, refused before sending, a
transaction that died before its COMMIT), never after a statement or a
COMMIT may have reached the server.  The decision on its own, then against
a real PostgreSQL whose backend is killed under the call.
"""

from __future__ import annotations

import psycopg2
from twisted.python.failure import Failure
from twisted.trial import unittest
from txpostgres import reconnection, txpostgres

from emaild.db.database import DatabaseUnavailable
from emaild.db.pool import Progress, may_retry
from tests.support import DatabaseTestCase


def _failure(exc: Exception) -> Failure:
    try:
        raise exc
    except Exception:
        return Failure()


class RetryDecisionTests(unittest.TestCase):
    def test_dead_at_checkout_is_retried(self):
        dead = _failure(reconnection.ConnectionDead())
        self.assertTrue(may_retry(dead, Progress(), transaction=False))
        self.assertTrue(may_retry(dead, Progress(), transaction=True))

    def test_statement_never_sent_is_retried(self):
        closed = _failure(psycopg2.InterfaceError("connection already closed"))
        self.assertTrue(may_retry(closed, Progress(sent=0), transaction=False))

    def test_statement_that_may_have_run_is_not_retried(self):
        lost = _failure(psycopg2.OperationalError("server closed the connection"))
        self.assertFalse(may_retry(lost, Progress(sent=1), transaction=False))

    def test_transaction_lost_before_commit_is_retried(self):
        lost = _failure(psycopg2.OperationalError("server closed the connection"))
        self.assertTrue(may_retry(lost, Progress(sent=3), transaction=True))
        rollback = _failure(txpostgres.RollbackFailed(None, lost))
        self.assertTrue(may_retry(rollback, Progress(sent=3), transaction=True))

    def test_transaction_lost_during_commit_is_not_retried(self):
        lost = _failure(psycopg2.OperationalError("server closed the connection"))
        self.assertFalse(may_retry(lost, Progress(sent=4, commit_sent=True), transaction=True))

    def test_answers_from_a_live_server_are_not_retried(self):
        for exc in (psycopg2.IntegrityError("duplicate key"),
                    psycopg2.extensions.QueryCanceledError("statement timeout"),
                    psycopg2.extensions.TransactionRollbackError("serialization failure"),
                    ValueError("A string literal cannot contain NUL")):
            self.assertFalse(may_retry(_failure(exc), Progress(), transaction=True), exc)
            self.assertFalse(may_retry(_failure(exc), Progress(), transaction=False), exc)


class RetryAgainstPostgresTests(DatabaseTestCase):
    pool_size = 2

    async def _table(self):
        await self.db.runOperation("CREATE TABLE retry_probe (n integer)")

    async def test_transaction_whose_connection_dies_before_commit_runs_again(self):
        await self._table()
        runs = []

        async def work(cursor):
            runs.append(1)
            await cursor.execute("INSERT INTO retry_probe VALUES (%s)", (len(runs),))
            if len(runs) == 1:
                # the backend dies under the transaction, before COMMIT
                await cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            return len(runs)

        self.assertEqual(await self.db.transaction(work), 2)
        self.assertEqual(self.query("SELECT n FROM retry_probe"), [(2,)])
        self.assertEqual(self.db.retried, 1)

    async def test_connection_dying_during_commit_is_not_retried(self):
        await self._table()
        # a deferred trigger runs at COMMIT: it kills the backend there
        await self.db.runOperation(
            "CREATE FUNCTION retry_probe_kill() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN PERFORM pg_terminate_backend(pg_backend_pid());"
            " PERFORM pg_sleep(1); RETURN NULL; END $$")
        await self.db.runOperation(
            "CREATE CONSTRAINT TRIGGER retry_probe_at_commit AFTER INSERT ON retry_probe"
            " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION retry_probe_kill()")
        runs = []

        async def work(cursor):
            runs.append(1)
            await cursor.execute("INSERT INTO retry_probe VALUES (1)")

        with self.assertRaises(DatabaseUnavailable):
            await self.db.transaction(work)
        self.assertEqual(len(runs), 1)
        self.assertEqual(self.db.retried, 0)

    async def test_single_statement_that_reached_the_server_is_not_retried(self):
        with self.assertRaises(DatabaseUnavailable):
            await self.db.runQuery("SELECT pg_terminate_backend(pg_backend_pid())")
        self.assertEqual(self.db.retried, 0)
        # the next call gets a live connection (the other one, or this one reconnected)
        self.assertEqual(await self.db.runQuery("SELECT 1"), [(1,)])
