"""
Clicks on links of one purpose, written together: the clicks that arrive
in one turn of the reactor, or while statements for earlier clicks are in
flight, go in one statement (L{LinkStore.use_many}), with one commit for
all of them.

A batch starts at the end of the reactor turn in which its first click
arrived (C{callLater(0)}: after every request that turn's readable sockets
carried was parsed, before the reactor waits again), so an idle site adds
no delay, and a burst of requests read together is one statement rather
than a lone click followed by all the others.  Under a burst (a mail to a
whole course, everyone clicking at once) this is what keeps clicks from
queueing one commit each behind the connection pool: N clicks cost one
round trip, one parse and plan, and one wait for the disk.  Every click
still waits for the commit of its own statement before its answer (the
session exists before the redirect that hands out its cookie; whether that
commit also waits for the disk is the caller's choice, C{durable}).

Only C{in_flight} statements run at once (two by default: the clicks that
arrive while one commits need not wait for it; the rest of the daemon keeps
the other pooled connections).  When one commits, the clicks waiting go at
once, before its clicks are answered.  Each statement locks its rows in id
order; should two still deadlock (PostgreSQL aborts one of them, which then
has changed nothing), the aborted batch is run again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from psycopg2.errors import DeadlockDetected
from twisted.internet import defer
from twisted.python.failure import Failure

from emaild.links.store import LinkRow, LinkStore
from emaild.links.tokens import TokenParts

#: at most this many clicks in one statement
MAX_BATCH = 64
#: a batch aborted by a deadlock is run again at most this many times
DEADLOCK_RETRIES = 3

#: SQL (CTEs reading C{link_used}) and parameters for a batch's values
AlsoMany = Callable[[list, str], "tuple[str, dict]"]


class ClickBatcher:
    """
    @param also_many: called with the batch's values (one per click, in
        order) and the name of the CTE of usable clicks (C{link_used}:
        C{n}, C{id}, C{person_id}); returns C{(ctes, params)} that run in
        the statement (see L{emaild.web.sessions.SessionStore.start_many_ctes}).
    @param durable: whether each statement's commit waits for the disk
        (see L{LinkStore.use_many}); each click is answered after its
        statement committed either way.
    """

    def __init__(self, store: LinkStore, purpose: str, also_many: AlsoMany | None = None,
                 clock=time.time, max_batch: int = MAX_BATCH, in_flight: int = 2,
                 reactor=None, durable: bool = True):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.store = store
        self.purpose = purpose
        self.also_many = also_many
        self.clock = clock
        self.max_batch = max_batch
        self.in_flight = in_flight
        self.durable = durable
        self._waiting: list[tuple[TokenParts, Any, defer.Deferred]] = []
        self._running = 0
        #: the start at the end of this reactor turn, once scheduled
        self._start_call = None

    def use(self, parts: TokenParts, value: Any = None) -> defer.Deferred:
        """
        Count a use of the link C{parts} names, if it is usable, with
        C{value} for C{also_many}.  Fires with C{(row before the use or
        None, whether it was used)} once the statement has committed.
        """
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((parts, value, d))
        if self._running < self.in_flight and self._start_call is None:
            self._start_call = self.reactor.callLater(0, self._start_waiting)
        return d

    def _start_waiting(self) -> None:
        self._start_call = None
        while self._waiting and self._running < self.in_flight:
            self._start()

    def _start(self) -> None:
        batch = self._waiting[:self.max_batch]
        del self._waiting[:self.max_batch]
        self._running += 1
        self._run(batch, DEADLOCK_RETRIES)

    def _run(self, batch: list, retries: int) -> None:
        also: tuple[str, dict] = ("", {})
        if self.also_many is not None:
            also = self.also_many([value for _, value, _ in batch], "link_used")
        d = defer.ensureDeferred(self.store.use_many(
            [parts for parts, _, _ in batch], self.purpose, self.clock(), also, self.durable))
        d.addBoth(self._finished, batch, retries)

    def _finished(self, result: Sequence[tuple[LinkRow | None, bool]] | Failure,
                  batch: list, retries: int) -> None:
        if isinstance(result, Failure) and result.check(DeadlockDetected) and retries > 0:
            self._run(batch, retries - 1)  # it was rolled back: nothing was written
            return
        self._running -= 1
        if self._waiting:
            self._start()  # the next batch goes while we answer this one
        for k, (_, _, d) in enumerate(batch):
            if d.called:  # the caller stopped waiting; the work is done
                continue
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result[k])
