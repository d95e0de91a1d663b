"""
The connection to PostgreSQL that every part of emaild shares.

A txpostgres pool in which every connection has its own
C{DeadConnectionDetector}: when PostgreSQL goes away, queries fail at once
with L{DatabaseUnavailable} instead of hanging, each connection reconnects by
itself with backoff, and the daemon carries on without a restart.  A call
that failed on a dead connection before it could have committed is run
once more on a fresh one (L{emaild.db.pool}), so once PostgreSQL is back
nothing fails for that reason.  LISTEN
runs on a dedicated connection that re-subscribes after a reconnect and tells
its listener, since NOTIFYs sent during the outage are lost.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Coroutine, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from emaild.db.pool import Connection, Pool
from emaild.db.prepared import Statement
from emaild.db.reconnect import CONNECT_TIMEOUT, Detector, is_connection_error

log = Logger()


_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.I)
_PASSWORD_URL = re.compile(r"(://[^:/@\s]*:)[^@\s]*(@)")


def redact(text: str) -> str:
    """
    C{text} with any database password (C{password=…} or C{://user:pw@})
    replaced by C{***}, for logs and error messages.
    """
    return _PASSWORD_URL.sub(r"\1***\2", _PASSWORD_KV.sub(r"\1***", text))


class DatabaseUnavailable(Exception):
    """
    PostgreSQL cannot be reached right now; the operation was not done.
    """


def _connect_kwargs() -> dict:
    # Detect a silently dead server (no FIN) within about half a minute.
    return {
        "connect_timeout": 5,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "application_name": "emaild",
    }


def _uncancellable(d: defer.Deferred) -> defer.Deferred:
    """
    A Deferred for C{d}'s result whose cancellation does not reach C{d}.

    Cancelling a txpostgres query in flight raises from its canceller and
    leaves the connection mid-cancel; callers that give up (a client that
    disconnected, Ctrl-C in the CLI) only stop waiting, and the query or
    transaction runs to its end.
    """
    waiter: defer.Deferred = defer.Deferred()

    def forward(result):
        if not waiter.called:
            waiter.callback(result) if not isinstance(result, Failure) else waiter.errback(result)
        elif isinstance(result, Failure) and not result.check(DatabaseUnavailable):
            log.failure("database call failed after its caller stopped waiting", result)

    d.addBoth(forward)
    return waiter


class Database:
    """
    @ivar dsn: libpq connection string or URL.
    """

    def __init__(self, reactor, dsn: str, pool_size: int = 4, prepare: bool = True):
        self.reactor = reactor
        self.dsn = dsn
        self.pool_size = pool_size
        #: whether L{Statement}s are prepared (see L{emaild.db.prepared})
        self.prepare = prepare
        #: seconds start() waits for the server to answer
        self.connect_timeout = CONNECT_TIMEOUT
        self._pool: Pool | None = None
        self._listen_conn: Connection | None = None
        #: parts start LISTEN at the same time: one of them makes the connection
        self._listen_lock = defer.DeferredLock()
        self._listeners: dict[str, list[Callable[[str], Any]]] = {}
        self._recovered: list[Callable[[], Any]] = []

    async def start(self) -> None:
        pool = Pool(self.reactor, self.dsn, self.pool_size, self.prepare)
        pool.connkw.update(_connect_kwargs())
        # libpq ignores connect_timeout on these non-blocking connections: a
        # server that accepts and never answers would hold start-up for ever
        # (closing the pool fails the connections still being made)
        timer = self.reactor.callLater(self.connect_timeout, pool.close)
        try:
            await pool.start()
        except Exception as e:
            pool.close()
            cause = e.subFailure.value if isinstance(e, defer.FirstError) else e
            reason = " ".join(str(cause).split()) or type(cause).__name__
            if not timer.active():
                reason = f"no answer within {self.connect_timeout:g} s"
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL ({redact(self.dsn)}): {reason}") from None
        finally:
            if timer.active():
                timer.cancel()
        self._pool = pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._listen_conn is not None:
            self._listen_conn.detector.stop()
            self._listen_conn.close()
            self._listen_conn = None

    # -- queries ---------------------------------------------------------
    def _fail_clearly(self, failure):
        if is_connection_error(failure):
            raise DatabaseUnavailable(str(failure.value) or failure.type.__name__)
        return failure

    def _checked(self):
        if self._pool is None:
            raise DatabaseUnavailable("database is not open")
        return self._pool

    def runQuery(self, sql: str, params: Any = None) -> defer.Deferred:  # noqa: N802
        d = defer.maybeDeferred(lambda: self._checked().runQuery(sql, params))
        return _uncancellable(d.addErrback(self._fail_clearly))

    def runOperation(self, sql: str, params: Any = None) -> defer.Deferred:  # noqa: N802
        d = defer.maybeDeferred(lambda: self._checked().runOperation(sql, params))
        return _uncancellable(d.addErrback(self._fail_clearly))

    def run_prepared(self, statement: Statement, params: Sequence[Any] = ()) -> defer.Deferred:
        """
        Run C{statement} (autocommit, as L{runQuery}); fires with its rows,
        or None for a statement that returns none.
        """
        d = defer.maybeDeferred(lambda: self._checked().run_prepared(statement, params))
        return _uncancellable(d.addErrback(self._fail_clearly))

    def transaction(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args, **kwargs) -> defer.Deferred:
        """
        Run C{async def fn(cursor, *args, **kwargs)} in one transaction:
        committed when it returns, rolled back when it raises.

        (txpostgres' runInteraction does not await coroutines: it would commit
        an empty transaction.  Wrapping in ensureDeferred makes it wait.)

        C{fn} may be called a second time, on a fresh connection, when the
        first connection died before COMMIT was sent (nothing of the first
        run was kept): it must do nothing outside the transaction that it
        cannot do twice.
        """

        def interaction(cursor):
            return defer.ensureDeferred(fn(cursor, *args, **kwargs))

        d = defer.maybeDeferred(lambda: self._checked().runInteraction(interaction))
        return _uncancellable(d.addErrback(self._fail_clearly))

    @property
    def retried(self) -> int:
        """
        How many calls were run a second time on a fresh connection (see
        L{emaild.db.pool.may_retry}).
        """
        return self._pool.retried if self._pool is not None else 0

    @property
    def connected(self) -> bool:
        """
        Whether any pooled connection is believed alive (for /healthz; a
        query is the real test).
        """
        if self._pool is None:
            return False
        return any(not c.detector.connectionIsDead for c in self._pool.every_connection)

    # -- LISTEN/NOTIFY -------------------------------------------------------
    async def listen(self, channel: str, on_notify: Callable[[str], Any],
                     on_recovered: Callable[[], Any] | None = None) -> None:
        """
        Call C{on_notify(payload)} for each NOTIFY on C{channel}, and
        C{on_recovered()} after the listening connection came back from an
        outage (notifications may have been missed meanwhile).
        """
        async with self._listen_lock:
            if self._listen_conn is None:
                detector = Detector(self.reactor)
                conn = Connection(self.reactor, detector=detector)
                await conn.connect(self.dsn, **_connect_kwargs())
                conn.addNotifyObserver(self._dispatch)
                detector.addRecoveryHandler(self._relisten)
                self._listen_conn = conn
        self._listeners.setdefault(channel, []).append(on_notify)
        if on_recovered is not None:
            self._recovered.append(on_recovered)
        await self._listen_conn.runOperation(f'LISTEN "{channel}"')

    def _dispatch(self, notify) -> None:
        for callback in self._listeners.get(notify.channel, []):
            try:
                callback(notify.payload)
            except Exception:
                log.failure("NOTIFY handler for {channel} failed", channel=notify.channel)

    async def _relisten_async(self) -> None:
        assert self._listen_conn is not None  # only its detector calls this
        for channel in self._listeners:
            await self._listen_conn.runOperation(f'LISTEN "{channel}"')
        log.info("Database connection recovered; listening again")
        for callback in self._recovered:
            try:
                callback()
            except Exception:
                log.failure("database recovery handler failed")

    def _relisten(self):
        return defer.ensureDeferred(self._relisten_async())


async def notify(cursor, channel: str, payload: str = "") -> None:
    """
    Send a NOTIFY from inside a transaction (delivered when it commits).
    """
    await cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))
