"""
Queueing a long list of recipients chunk by chunk, with the rendering of
one chunk overlapping the INSERT of the one before.

    pipeline = EnqueuePipeline(outbox, "welcome", qos=None, batch="x.csv")
    for chunk in chunks:
        rendered = await pipeline.render(chunk)   # the previous INSERT runs meanwhile
        report = await pipeline.wait()            # it committed: its ids (or None)
        ...                                       # (stop here and nothing more is queued)
        pipeline.write(rendered)                  # this chunk's transaction starts
    report = await pipeline.wait()

Rendering is Python work in this process and the INSERT is PostgreSQL's
work in its own, so doing both at once takes the longer of the two instead
of their sum.  Every chunk is still its own transaction, the transactions
run one after the other in the order of the chunks, and no chunk's INSERT
starts before the previous one committed: what is queued at any moment is a
prefix of the chunks, as when they are queued one L{Outbox.enqueue} call at
a time.

While a chunk renders, the reactor gets a turn every L{PAUSE_EVERY}
recipients (L{render}), so that the driver can go on sending the previous
chunk's statement and read its answer; without that, PostgreSQL would wait
for the rest of the statement until the rendering is done.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, Sequence

import attrs
from twisted.internet import defer

from emaild.outbound.compose import Rendered
from emaild.outbound.outbox import EnqueueReport, Outbox, Rejected

#: recipients rendered between two turns of the reactor (about 2 ms)
PAUSE_EVERY = 50


def next_turn() -> Awaitable[None]:
    """
    A Deferred that fires on the reactor's next turn, after it polled.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, 0, lambda: None)


@attrs.frozen
class RenderedChunk:
    messages: list[Rendered]
    #: rows that did not render (index: position in the chunk)
    rejected: list[Rejected]


class EnqueuePipeline:
    """
    @param outbox: renders (L{Outbox.render_many}) and stores.
    @param pause: returns something to await that gives the reactor a turn
        (tests pass their own).
    @raise ComposeError: (from the constructor) a missing or broken
        template or an unknown QoS class: nothing is queued.
    """

    def __init__(self, outbox: Outbox, template: str, qos: str | None = None,
                 batch: str | None = None, *,
                 pause: Callable[[], Awaitable[None]] = next_turn,
                 pause_every: int = PAUSE_EVERY):
        self.outbox = outbox
        self.template = template
        self.qos_class = outbox.check(template, qos)
        self.batch = batch
        self.pause = pause
        self.pause_every = pause_every
        self._writing: defer.Deferred | None = None

    async def render(self, recipients: Sequence[tuple[str, Mapping[str, Any]]]) -> RenderedChunk:
        """
        Render a chunk (nothing is queued yet), giving the reactor a turn
        now and then.
        """
        messages: list[Rendered] = []
        rejected: list[Rejected] = []
        step = self.pause_every
        for start in range(0, len(recipients), step):
            if start:
                await self.pause()
            done, failed = self.outbox.render_many(
                self.template, recipients[start:start + step], first_index=start)
            messages.extend(done)
            rejected.extend(failed)
        return RenderedChunk(messages, rejected)

    def write(self, chunk: RenderedChunk) -> None:
        """
        Start the transaction that queues C{chunk}; L{wait} for it before
        the next L{write}.
        """
        if self._writing is not None:
            raise RuntimeError("the previous chunk is still being written: wait() first")
        self._writing = defer.ensureDeferred(self._write(chunk))

    async def _write(self, chunk: RenderedChunk) -> EnqueueReport:
        ids = (await self.outbox.store.enqueue(self.template, self.qos_class, chunk.messages,
                                               self.batch)
               if chunk.messages else [])
        return EnqueueReport(ids, chunk.rejected)

    async def wait(self) -> EnqueueReport | None:
        """
        The report of the chunk being written once it committed, or None
        when none is; raises what its transaction raised (it was rolled
        back, and later chunks were not written).
        """
        writing, self._writing = self._writing, None
        if writing is None:
            return None
        return await writing
