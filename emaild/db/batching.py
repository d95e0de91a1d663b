"""
One statement for many calls: the calls that arrive while earlier ones are
in flight wait, and go together in the next statement, whose results fan
out to them in order.

With a slot free a call goes at once, so a lone call waits for nothing;
under load the statements per call go down with the load.  Given a reactor,
a batch starts at the end of the reactor turn instead (C{callLater(0)}), so
that the calls one turn's readable sockets carried share a statement.  When
a statement is done, the calls waiting go at once, before its own callers
are answered.  Each caller is answered only with its own result: a failed
statement fails exactly the calls it held, and a result list of the wrong
length fails them all rather than answer one with another's result.

Used by the inbound group commit, the RCPT member lookups and the link
clicks (each says what its statement is and what its failures mean).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

Item = TypeVar("Item")


class Batcher(Generic[Item]):
    """
    @param run: C{async def run(items)}: one statement for C{items}; returns
        one result per item, in order (a L{Failure} in that list fails only
        its own call).
    @param max_items: at most this many calls in one statement
    @param size: with C{max_size}, each item's size: a batch holds at most
        about C{max_size} (and always at least one item)
    @param in_flight: statements running at once
    @param reactor: start each batch at the end of the reactor turn in which
        its first call arrived, rather than at once
    """

    def __init__(self, run: Callable[[list[Item]], Awaitable[Sequence[Any]]], *,
                 max_items: int, size: Callable[[Item], int] | None = None,
                 max_size: int = 0, in_flight: int = 1, reactor=None):
        self.run = run
        self.max_items = max_items
        self.size = size
        self.max_size = max_size
        self.in_flight = in_flight
        self.reactor = reactor
        self._waiting: list[tuple[Item, defer.Deferred]] = []
        self._running = 0
        #: the start at the end of this reactor turn, once scheduled
        self._start_call = None

    def submit(self, item: Item) -> defer.Deferred:
        """Fires with C{item}'s result once the statement that holds it is done."""
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((item, d))
        if self._running < self.in_flight:
            if self.reactor is None:
                self._start()
            elif self._start_call is None:
                self._start_call = self.reactor.callLater(0, self._start_waiting)
        return d

    def _start_waiting(self) -> None:
        self._start_call = None
        while self._waiting and self._running < self.in_flight:
            self._start()

    def _take(self) -> list[tuple[Item, defer.Deferred]]:
        n = min(len(self._waiting), self.max_items)
        if self.size is not None and self.max_size:
            total = 0
            for i, (item, _) in enumerate(self._waiting[:n]):
                total += self.size(item)
                if i and total > self.max_size:
                    n = i
                    break
        batch = self._waiting[:n]
        del self._waiting[:n]
        return batch

    def _start(self) -> None:
        batch = self._take()
        self._running += 1
        d = defer.ensureDeferred(self._run(batch))
        d.addErrback(lambda f: log.failure("batched statement: answering its callers", f))

    async def _run(self, batch: list[tuple[Item, defer.Deferred]]) -> None:
        try:
            results: Sequence[Any] | Failure = await self.run([item for item, _ in batch])
        except Exception:
            results = Failure()
        if not isinstance(results, Failure) and len(results) != len(batch):
            results = Failure(RuntimeError(f"a statement for {len(batch)} calls gave "
                                           f"{len(results)} results"))
        self._running -= 1
        if self._waiting:
            self._start()  # the next batch goes while we answer this one
        for k, (_, d) in enumerate(batch):
            if d.called:  # the caller stopped waiting; the work is done
                continue
            result = results if isinstance(results, Failure) else results[k]
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)
