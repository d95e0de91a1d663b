"""
When a txpostgres connection is gone, and getting it back: which failures
mean the server went away (L{connection_died}), and the L{Detector} each
pooled connection has, which reconnects with backoff, can be asked to try
at once, and can be stopped.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from txpostgres import reconnection, retrying, txpostgres
from txpostgres.psycopg2_impl import psycopg2

log = Logger()


def connection_died(failure) -> bool:
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


def is_connection_error(failure) -> bool:
    return connection_died(failure) or bool(failure.check(reconnection.ConnectionDead))


#: seconds a reconnection attempt may take: libpq ignores C{connect_timeout}
#: on the non-blocking connections txpostgres makes
CONNECT_TIMEOUT = 10.0


def _reconnection_delays():
    # first retry at once, then back off to at most 5 s between tries, for ever
    return retrying.simpleBackoffIterator(
        initialDelay=0.5, maxDelay=5.0, factor=1.7, maxRetries=0, now=True
    )


class Detector(reconnection.DeadConnectionDetector):
    """
    Reconnects a dead connection with backoff, can be asked to try at once
    (L{reconnect_now}, for a caller that needs the connection now), and can
    be stopped: closing the database while PostgreSQL is down must not leave
    a reconnection loop running.
    """

    stopped = False

    def __init__(self, reactor):
        super().__init__(deathChecker=connection_died,
                         reconnectionIterator=_reconnection_delays, reactor=reactor)
        self._delays = None
        self._timer = None
        self._connecting: defer.Deferred | None = None
        self._attempt_timeout = None
        self._waiters: list[defer.Deferred] = []

    def startReconnecting(self, f):  # noqa: N802 (txpostgres API)
        if self.stopped:
            return
        log.warn("Lost the database connection ({error}); reconnecting", error=f.value)
        self._delays = self.reconnectionIterator()
        self._schedule()

    def _schedule(self) -> None:
        assert self._delays is not None  # set by startReconnecting
        self._timer = self.reactor.callLater(next(self._delays), self._attempt)

    def _attempt(self) -> None:
        self._timer = None
        d = self._connecting = defer.maybeDeferred(self.reconnect)
        # a server that accepts and never answers must not hold the
        # callers waiting in reconnect_now for ever: give up, try later
        timeout = self._attempt_timeout = self.reactor.callLater(
            CONNECT_TIMEOUT, self._abandon, d)

        def settled(result):
            if timeout.active():
                timeout.cancel()
            return result

        d.addBoth(settled)
        d.addCallbacks(self._connected, self._failed)

    def _abandon(self, attempt: defer.Deferred) -> None:
        if attempt is self._connecting:
            log.warn("Reconnecting to the database took over {s} s; trying again",
                     s=CONNECT_TIMEOUT)
            # closing fails the attempt's poll (see txpostgres Connection.close)
            self.reconnectable.close()

    def _connected(self, _):
        self._connecting = None
        if self.stopped:
            # the database was closed while this attempt was under way
            self.reconnectable.close()
            self._wake_waiters(False)
            return
        d = defer.maybeDeferred(self.connectionRecovered)
        d.addErrback(lambda f: log.failure("database recovery handler failed", f))
        self._wake_waiters(True)

    def _failed(self, failure):
        self._connecting = None
        if not self.stopped:
            self._schedule()
        self._wake_waiters(False)

    def _wake_waiters(self, connected: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(connected)

    def reconnect_now(self) -> defer.Deferred:
        """
        Try to reconnect without waiting for the next scheduled attempt;
        fires with whether the connection is alive (never fails).
        """
        if not self.connectionIsDead:
            return defer.succeed(True)
        if self.stopped:
            return defer.succeed(False)
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        if self._connecting is None:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._attempt()
        return waiter

    def stop(self) -> None:
        self.stopped = True
        for call in (self._timer, self._attempt_timeout):
            if call is not None and call.active():
                call.cancel()
        self._timer = None
        self._wake_waiters(False)
