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

from emaild.db.batching import Batcher
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
        self.store = store
        self.purpose = purpose
        self.also_many = also_many
        self.clock = clock
        self.durable = durable
        #: the clicks of one reactor turn, or of the time both are in flight
        self.batches: Batcher[tuple[TokenParts, Any]] = Batcher(
            self._use_many, max_items=max_batch, in_flight=in_flight, reactor=reactor)

    def use(self, parts: TokenParts, value: Any = None) -> defer.Deferred:
        """
        Count a use of the link C{parts} names, if it is usable, with
        C{value} for C{also_many}.  Fires with C{(row before the use or
        None, whether it was used)} once the statement has committed.
        """
        return self.batches.submit((parts, value))

    async def _use_many(self, batch: list[tuple[TokenParts, Any]]
                        ) -> Sequence[tuple[LinkRow | None, bool]]:
        retries = DEADLOCK_RETRIES
        while True:
            also: tuple[str, dict] = ("", {})
            if self.also_many is not None:
                also = self.also_many([value for _, value in batch], "link_used")
            try:
                return await self.store.use_many(
                    [parts for parts, _ in batch], self.purpose, self.clock(), also,
                    self.durable)
            except DeadlockDetected:
                if not retries:
                    raise
                retries -= 1  # it was rolled back: nothing was written
