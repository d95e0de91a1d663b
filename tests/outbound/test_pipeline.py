"""
L{EnqueuePipeline} (no database): the next chunk renders while the last
is written, never two transactions at once, failures surface in order.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from emaild.outbound.outbox import EnqueueReport, Rejected
from emaild.outbound.pipeline import EnqueuePipeline


class FakeOutbox:
    """
    What the pipeline uses of an Outbox: check, render_many and a store
    whose enqueue calls the test controls.
    """

    def __init__(self):
        self.store = self
        self.writes: list[tuple[list, defer.Deferred]] = []
        self.rendered: list[str] = []

    def check(self, template, qos=None):
        return "qos-class"

    def render_many(self, template, recipients, first_index=0):
        done, failed = [], []
        for index, (address, _) in enumerate(recipients, first_index):
            self.rendered.append(address)
            if "@" in address:
                done.append(address)
            else:
                failed.append(Rejected(index, address, "bad"))
        return done, failed

    def enqueue(self, template, qos, messages, batch):
        d: defer.Deferred = defer.Deferred()
        self.writes.append((list(messages), d))
        return d


class PipelineTests(unittest.TestCase):
    def setUp(self):
        self.outbox = FakeOutbox()
        self.pauses = 0

        def pause():
            self.pauses += 1
            return defer.succeed(None)

        self.pipeline = EnqueuePipeline(self.outbox, "t", batch="b", pause=pause, pause_every=2)

    def render(self, recipients):
        return self.successResultOf(defer.ensureDeferred(self.pipeline.render(recipients)))

    def test_the_next_chunk_renders_while_the_last_is_written(self):
        first = self.render([("a@x", {}), ("bad", {}), ("b@x", {})])
        self.assertEqual(first.messages, ["a@x", "b@x"])
        self.assertEqual(first.rejected, [Rejected(1, "bad", "bad")])
        self.assertEqual(self.pauses, 1)  # every 2 recipients
        self.pipeline.write(first)
        second = self.render([("c@x", {})])  # while the first is still being written
        self.assertEqual(second.messages, ["c@x"])
        self.assertEqual(len(self.outbox.writes), 1)
        with self.assertRaises(RuntimeError):
            self.pipeline.write(second)  # never two transactions at once
        waiting = defer.ensureDeferred(self.pipeline.wait())
        self.assertNoResult(waiting)
        self.outbox.writes[0][1].callback([1, 2])
        self.assertEqual(self.successResultOf(waiting),
                         EnqueueReport([1, 2], [Rejected(1, "bad", "bad")]))
        self.pipeline.write(second)
        self.assertEqual([m for m, _ in self.outbox.writes], [["a@x", "b@x"], ["c@x"]])
        self.outbox.writes[1][1].callback([3])
        self.assertEqual(self.successResultOf(defer.ensureDeferred(self.pipeline.wait())).ids, [3])
        self.assertIsNone(self.successResultOf(defer.ensureDeferred(self.pipeline.wait())))

    def test_a_failed_transaction_is_raised_by_wait(self):
        self.pipeline.write(self.render([("a@x", {})]))
        waiting = defer.ensureDeferred(self.pipeline.wait())
        self.outbox.writes[0][1].errback(RuntimeError("database gone"))
        self.failureResultOf(waiting, RuntimeError)
        self.assertIsNone(self.successResultOf(defer.ensureDeferred(self.pipeline.wait())))

    def test_a_chunk_of_rejected_rows_only_writes_nothing(self):
        self.pipeline.write(self.render([("bad", {})]))
        report = self.successResultOf(defer.ensureDeferred(self.pipeline.wait()))
        self.assertEqual(report, EnqueueReport([], [Rejected(0, "bad", "bad")]))
        self.assertEqual(self.outbox.writes, [])
