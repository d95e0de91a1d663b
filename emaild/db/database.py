"""
The connection to PostgreSQL that every part of emaild shares.

A txpostgres pool in which every connection has its own
C{DeadConnectionDetector}: when PostgreSQL goes away, queries fail at once
with L{DatabaseUnavailable} instead of hanging, each connection reconnects by
itself with backoff, and the daemon carries on without a restart.  LISTEN
runs on a dedicated connection that re-subscribes after a reconnect and tells
its listener, since NOTIFYs sent during the outage are lost.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import reconnection, retrying, txpostgres

from txpostgres.psycopg2_impl import psycopg2

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


def _connection_died(failure) -> bool:
    """
    Whether C{failure} means the connection is gone (as opposed to a query
    that PostgreSQL refused on a healthy connection: a statement timeout or
    a serialization failure are OperationalErrors too, but need no reconnect).
    """
    if failure.check(psycopg2.extensions.QueryCanceledError,
                     psycopg2.extensions.TransactionRollbackError):
        return False
    return bool(failure.check(psycopg2.InterfaceError, psycopg2.OperationalError,
                              txpostgres.RollbackFailed))


def _is_connection_error(failure) -> bool:
    return _connection_died(failure) or bool(failure.check(reconnection.ConnectionDead))


def _reconnection_delays():
    # first retry at once, then back off to at most 5 s between tries, for ever
    return retrying.simpleBackoffIterator(
        initialDelay=0.5, maxDelay=5.0, factor=1.7, maxRetries=0, now=True
    )


class _Detector(reconnection.DeadConnectionDetector):
    """
    A detector that can be stopped: closing the database while PostgreSQL is
    down must not leave a reconnection loop running.
    """

    stopped = False
    _reconnecting = None

    def __init__(self, reactor):
        super().__init__(deathChecker=_connection_died,
                         reconnectionIterator=_reconnection_delays, reactor=reactor)

    def startReconnecting(self, f):  # noqa: N802 (txpostgres API)
        if self.stopped:
            return
        log.warn("Lost the database connection ({error}); reconnecting", error=f.value)
        call = retrying.RetryingCall(self.reconnect)
        call.reactor = self.reactor
        d = self._reconnecting = call.start(self.reconnectionIterator())
        d.addCallback(lambda _: self.connectionRecovered())
        d.addErrback(lambda f: None if f.check(defer.CancelledError) else log.failure(
            "database reconnection stopped", f))
        d.addBoth(lambda _: setattr(self, "_reconnecting", None))

    def stop(self) -> None:
        self.stopped = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()


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


class _Cursor(txpostgres.Cursor):
    doRead = _read_or_lost


class _Connection(txpostgres.Connection):
    cursorFactory = _Cursor

    def _runInteraction(self, interaction, *args, **kwargs):  # noqa: N802
        # txpostgres' own version logs a traceback whenever the ROLLBACK after
        # a failed transaction fails, which is every time the server went away
        # mid-transaction; we report it as RollbackFailed (a dead connection)
        # without the noise.
        cursor = self.cursor()
        d = cursor.execute("begin")
        d.addCallback(interaction, *args, **kwargs)

        def commit(result):
            return cursor.execute("commit").addCallback(lambda _: result)

        def rollback(failure):
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
        if not self._connection.closed:
            self.reactor.addReader(self)


class _Pool(txpostgres.ConnectionPool):
    def __init__(self, reactor, dsn: str, size: int):
        self.reactor = reactor
        self.min = size
        super().__init__(None, dsn, min=size)

    def connectionFactory(self, reactor, cooperator):  # noqa: N802 (txpostgres API)
        connection = _Connection(reactor, cooperator, detector=_Detector(reactor))
        self.__dict__.setdefault("every_connection", []).append(connection)
        return connection

    def close(self):
        # txpostgres closes only the idle connections (those in the pool's
        # set); close the checked-out ones too, and stop their reconnecting.
        for connection in self.every_connection:
            connection.detector.stop()
            if connection._connection is not None:  # never connected: nothing to close
                connection.close()


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
    waiter = defer.Deferred()

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

    def __init__(self, reactor, dsn: str, pool_size: int = 4):
        self.reactor = reactor
        self.dsn = dsn
        self.pool_size = pool_size
        self._pool: _Pool | None = None
        self._listen_conn: txpostgres.Connection | None = None
        #: parts start LISTEN at the same time: one of them makes the connection
        self._listen_lock = defer.DeferredLock()
        self._listeners: dict[str, list[Callable[[str], Any]]] = {}
        self._recovered: list[Callable[[], Any]] = []

    async def start(self) -> None:
        pool = _Pool(self.reactor, self.dsn, self.pool_size)
        pool.connkw.update(_connect_kwargs())
        try:
            await pool.start()
        except Exception as e:
            pool.close()
            if isinstance(e, defer.FirstError):
                e = e.subFailure.value
            reason = " ".join(str(e).split()) or type(e).__name__
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL ({redact(self.dsn)}): {reason}") from None
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
        if _is_connection_error(failure):
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

    def transaction(self, fn: Callable[..., Awaitable[Any]], *args, **kwargs) -> defer.Deferred:
        """
        Run C{async def fn(cursor, *args, **kwargs)} in one transaction:
        committed when it returns, rolled back when it raises.

        (txpostgres' runInteraction does not await coroutines: it would commit
        an empty transaction.  Wrapping in ensureDeferred makes it wait.)
        """

        def interaction(cursor):
            return defer.ensureDeferred(fn(cursor, *args, **kwargs))

        d = defer.maybeDeferred(lambda: self._checked().runInteraction(interaction))
        return _uncancellable(d.addErrback(self._fail_clearly))

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
                detector = _Detector(self.reactor)
                conn = _Connection(self.reactor, detector=detector)
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
