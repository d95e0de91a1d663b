"""
The txpostgres pool under L{emaild.db.database.Database}: connections that
notice when PostgreSQL went away and reconnect by themselves, and a pool
that retries a call once on a fresh connection when the call cannot have
committed.

Why the retry: during an outage every pooled connection dies, and each
comes back on its own backoff schedule (up to 5 s apart).  Without it, a
query that happens to pick a connection still waiting for its next attempt,
or one whose death nobody had noticed yet, fails after PostgreSQL is back,
and an SMTP client gets a 451 for nothing.

When a retry is safe (L{may_retry}):
  - the connection was found dead at checkout, or psycopg2 refused to send
    the statement: nothing reached the server;
  - a transaction failed before its COMMIT was sent: PostgreSQL rolls back
    a transaction whose connection is lost, so nothing of it was kept.
A failure once a single statement (autocommit) or a COMMIT may have
reached the server is ambiguous (it may have committed just before the
connection died) and is never retried: the caller sees it.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, txpostgres
from txpostgres.psycopg2_impl import psycopg2

from emaild.db.prepared import Statement
from emaild.db.reconnect import Detector, connection_died

log = Logger()


@attrs.define
class Progress:
    """
    How far one database call got on its connection.
    """

    #: statements psycopg2 accepted to send (each may have reached the server)
    sent: int = 0
    #: a COMMIT was handed to psycopg2 (it may have reached the server)
    commit_sent: bool = False


def may_retry(failure: Failure, progress: Progress, transaction: bool) -> bool:
    """
    Whether a call that failed with C{failure} after C{progress} can be
    run again without any risk of doing its work twice.
    """
    if failure.check(reconnection.ConnectionDead):
        return True  # refused at checkout: nothing was sent
    if not connection_died(failure):
        return False  # PostgreSQL answered: the caller must hear it
    if transaction:
        return not progress.commit_sent
    return progress.sent == 0


def socket_gone(pollable) -> bool:
    """
    Whether libpq has closed the socket of psycopg2 connection C{pollable}.

    libpq closes it whenever it reads the end of the stream, inside any call
    (a poll that then reports nothing wrong, an execute), and psycopg2 says
    so only by C{fileno()} turning -1.
    """
    return bool(pollable.closed) or pollable.fileno() < 0


def _gone() -> psycopg2.OperationalError:
    return psycopg2.OperationalError("the server closed the connection")


def _read_or_lost(selectable):
    """
    Read for a txpostgres connection or cursor, but report a dead server as
    a lost connection (the reactor's convention: return the reason) instead
    of raising, which the reactor would log as an unhandled error each time
    PostgreSQL restarts.
    """
    try:
        return txpostgres._PollingMixin.doRead(selectable)
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
        return e


class Cursor(txpostgres.Cursor):
    doRead = _read_or_lost
    #: SQL sent in front of this cursor's next statement, in the same
    #: message (a transaction's BEGIN: see L{Connection._runInteraction})
    lead = ""

    def _doit(self, name, *args, **kwargs):
        # txpostgres' own, counting each statement psycopg2 accepted to send
        # (one it refused, e.g. on a closed connection, never left us).
        # The connection stops being watched *before* psycopg2 touches the
        # socket, not after: libpq may close the socket inside execute, and a
        # closed descriptor left registered corrupts the reactor's tables
        # (its number, reused by the next socket, is never watched again).
        lead = self.lead
        if lead:
            if name != "execute":
                raise NotImplementedError(f"{name} as a transaction's first statement")
            args = (lead + args[0], *args[1:])
            self.lead = ""
        connection = self._connection
        connection.cursorRunning(self)
        try:
            getattr(self._cursor, name)(*args, **kwargs)
        except Exception:
            failure = Failure()
            self.lead = lead  # refused: nothing was sent, the lead neither
            connection.cursorFinished(self)
            return defer.fail(failure)
        connection.progress.sent += 1

        def finished(result):
            connection.cursorFinished(self)
            return result

        return self.poll().addBoth(finished)

    def execute_prepared(self, statement: Statement, params=()) -> defer.Deferred:
        """
        Run C{statement} (see L{emaild.db.prepared}) with C{params}:
        prepared on this connection the first time it runs here.
        """
        params = statement.check(params)
        connection = self._connection
        if not connection.prepare:
            return self.execute(statement.plain_sql, statement.plain_parameters(params))
        if statement.name in connection.prepared:
            return self.execute(statement.execute_sql, params or None)
        before = connection.progress.sent

        def prepared(_):
            connection.prepared.add(statement.name)
            # PREPARE changes nothing a retry could do twice (see may_retry)
            connection.progress.sent = before
            return self.execute(statement.execute_sql, params or None)

        return self.execute(statement.prepare_sql).addCallback(prepared)


class Connection(txpostgres.Connection):
    cursorFactory = Cursor

    def __init__(self, *args, prepare: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress = Progress()
        #: whether L{Cursor.execute_prepared} prepares its statements
        self.prepare = prepare
        #: the statements prepared in the current server session
        self.prepared: set[str] = set()

    def connect(self, *args, **kwargs):
        # also the detector's way to reconnect: a new server session has
        # none of the old one's prepared statements
        self.prepared = set()
        return super().connect(*args, **kwargs)

    def run_prepared(self, statement: Statement, params=()) -> defer.Deferred:
        """
        L{Cursor.execute_prepared} on its own (autocommit, as runQuery):
        fires with its rows, or None for a statement that returns none.
        """
        return self._doit(self._run_prepared, statement, params)

    def _run_prepared(self, statement: Statement, params) -> defer.Deferred:
        d = self.cursor().execute_prepared(statement, params)
        return d.addCallback(lambda c: c.fetchall() if c.description is not None else None)

    def _runInteraction(self, interaction, *args, **kwargs):  # noqa: N802
        # txpostgres' own version logs a traceback whenever the ROLLBACK after
        # a failed transaction fails, which is every time the server went away
        # mid-transaction; we report it as RollbackFailed (a dead connection)
        # without the noise.  It also notes when COMMIT was sent (see may_retry).
        # BEGIN goes in one message with the interaction's first statement:
        # a round trip less per transaction.  PostgreSQL runs the two in
        # order and answers with the second's rows, or with the error of the
        # first that failed (the rest of the message is then skipped).
        cursor = self.cursor()
        cursor.lead = "BEGIN; "
        d = defer.maybeDeferred(interaction, cursor, *args, **kwargs)

        def commit(result):
            if cursor.lead:  # no statement ran: nothing to commit
                cursor.lead = ""
                return result
            before = self.progress.sent
            d = cursor.execute("commit")
            self.progress.commit_sent = self.progress.sent > before
            return d.addCallback(lambda _: result)

        def rollback(failure):
            if cursor.lead:  # nothing was sent: no transaction to roll back
                cursor.lead = ""
                return failure
            d = defer.maybeDeferred(cursor.execute, "rollback")
            d.addCallbacks(lambda _: failure,
                           lambda _: defer.fail(txpostgres.RollbackFailed(self, failure)))
            return d

        d.addCallback(commit)
        d.addErrback(rollback)
        return d

    def doRead(self):  # noqa: N802 (reactor API)
        lost = _read_or_lost(self)
        if lost is not None:
            return lost
        self.checkForNotifies()
        if socket_gone(self._connection):
            # the poll read the server's goodbye and libpq closed the socket
            # without an error: a lost connection all the same
            return _gone()
        self.reactor.addReader(self)

    def cursorFinished(self, cursor):  # noqa: N802 (txpostgres API)
        # txpostgres' own watches the connection again whenever psycopg2 has
        # not marked it closed, also when libpq closed the socket (fd -1)
        self._cursors.discard(cursor)
        if socket_gone(self._connection):
            if self.detector is not None:
                self.detector.checkForDeadConnection(Failure(_gone()))
            return
        self.reactor.addReader(self)
        self.checkForNotifies()

    def connectionLost(self, reason):  # noqa: N802 (reactor API)
        if socket_gone(self._connection):
            # nothing left to poll (txpostgres would poll and then watch
            # fd -1, raising before the detector hears of it)
            polling: defer.Deferred | None = getattr(self, "_pollingD", None)
            if polling is not None:
                self._pollingD = None
                polling.errback(reason)
            if self.detector is not None:
                self.detector.checkForDeadConnection(reason)
            return
        super().connectionLost(reason)


class Pool(txpostgres.ConnectionPool):
    """
    A txpostgres pool whose connections reconnect by themselves, that
    prefers a live connection at checkout, and that runs a call once more
    on a fresh connection when L{may_retry} says it is safe.
    """

    def __init__(self, reactor, dsn: str, size: int, prepare: bool = True):
        self.reactor = reactor
        self.min = size
        self.prepare = prepare
        #: every connection ever made, also those checked out
        self.every_connection: list[Connection] = []
        #: calls run a second time (for tests and logs)
        self.retried = 0
        super().__init__(None, dsn, min=size)

    def connectionFactory(self, reactor, cooperator):  # noqa: N802 (txpostgres API)
        connection = Connection(reactor, cooperator, detector=Detector(reactor),
                                prepare=self.prepare)
        self.every_connection.append(connection)
        return connection

    def close(self):
        # txpostgres closes only the idle connections (those in the pool's
        # set); close the checked-out ones too, and stop their reconnecting.
        for connection in self.every_connection:
            connection.detector.stop()
            if connection._connection is not None:  # never connected: nothing to close
                connection.close()

    # txpostgres calls these inside its semaphore, so one connection is ours
    def _runQuery(self, *args, **kwargs):  # noqa: N802
        return defer.ensureDeferred(self._run(lambda c: c.runQuery(*args, **kwargs), False))

    def _runOperation(self, *args, **kwargs):  # noqa: N802
        return defer.ensureDeferred(self._run(lambda c: c.runOperation(*args, **kwargs), False))

    def run_prepared(self, statement: Statement, params=()) -> defer.Deferred:
        return self._semaphore.run(lambda: defer.ensureDeferred(self._run(
            lambda c: c.run_prepared(statement, params), False)))

    def _runInteraction(self, interaction, *args, **kwargs):  # noqa: N802
        return defer.ensureDeferred(self._run(
            lambda c: c.runInteraction(interaction, *args, **kwargs), True))

    async def _run(self, call, transaction: bool):
        connection = await self._checkout()
        try:
            return await call(connection)
        except Exception:
            failure = Failure()
            if not may_retry(failure, connection.progress, transaction):
                raise
        finally:
            self.connections.add(connection)
        self.retried += 1
        log.info("Database call failed on a dead connection before it could commit "
                 "({error}); running it once more on a fresh one", error=failure.value)
        connection = await self._checkout()
        try:
            return await call(connection)
        finally:
            self.connections.add(connection)

    async def _checkout(self) -> Connection:
        live = [c for c in self.connections if not c.detector.connectionIsDead]
        connection = live[0] if live else next(iter(self.connections))
        self.connections.remove(connection)
        connection.progress = Progress()
        if connection.detector.connectionIsDead:
            # found dead: try now rather than at its next scheduled attempt
            # (if that fails, the call fails at once with ConnectionDead)
            await connection.detector.reconnect_now()
        return connection
