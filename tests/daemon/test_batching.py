"""
L{Batcher}: calls that arrive while a statement is in flight share the
next one, each caller gets exactly its own result, and a failure reaches
exactly the calls of its statement.  The statement is a stand-in whose
answers the test gives; the reactor a L{Clock}.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.trial import unittest

from emaild.db.batching import Batcher


class Statements:
    """C{run} for a Batcher: records each batch; the test answers it."""

    def __init__(self):
        self.batches: list[tuple[list, defer.Deferred]] = []

    async def run(self, items):
        d: defer.Deferred = defer.Deferred()
        self.batches.append((list(items), d))
        return await d

    def items(self) -> list[list]:
        return [items for items, _ in self.batches]


class BatcherTests(unittest.TestCase):
    def setUp(self):
        self.statements = Statements()
        self.results: dict[object, object] = {}

    def batcher(self, **kwargs) -> Batcher:
        kwargs.setdefault("max_items", 3)
        return Batcher(self.statements.run, **kwargs)

    def submit(self, batcher: Batcher, item):
        d = batcher.submit(item)
        d.addBoth(lambda r: self.results.__setitem__(item, r))
        return d

    def test_a_lone_call_goes_at_once_and_waits_for_its_statement(self):
        batcher = self.batcher()
        self.submit(batcher, "a")
        self.assertEqual(self.statements.items(), [["a"]])
        self.assertEqual(self.results, {})
        self.statements.batches[0][1].callback(["A"])
        self.assertEqual(self.results, {"a": "A"})

    def test_calls_arriving_during_a_statement_share_the_next_one(self):
        batcher = self.batcher()
        for item in "abcde":
            self.submit(batcher, item)
        self.assertEqual(self.statements.items(), [["a"]])
        self.statements.batches[0][1].callback(["A"])
        # at most max_items of those waiting, started before "a" is answered
        self.assertEqual(self.statements.items()[1], ["b", "c", "d"])
        self.statements.batches[1][1].callback(["B", "C", "D"])
        self.statements.batches[2][1].callback(["E"])
        self.assertEqual(self.results, {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"})

    def test_the_next_statement_starts_before_the_callers_are_answered(self):
        batcher = self.batcher()
        seen = []
        batcher.submit("a").addCallback(lambda _: seen.append(len(self.statements.batches)))
        batcher.submit("b")
        self.statements.batches[0][1].callback(["A"])
        self.assertEqual(seen, [2])

    def test_a_call_made_from_inside_an_answer_waits_for_its_own_statement(self):
        batcher = self.batcher()
        batcher.submit("a").addCallback(lambda _: self.submit(batcher, "b"))
        self.statements.batches[0][1].callback(["A"])
        self.assertEqual(self.statements.items(), [["a"], ["b"]])
        self.assertNotIn("b", self.results)

    def test_batches_are_bounded_in_size_but_hold_at_least_one(self):
        batcher = self.batcher(max_items=10, size=len, max_size=5)
        for item in ("x", "aa", "bbb", "cccc", "dddddddd"):
            self.submit(batcher, item)
        self.statements.batches[0][1].callback(["X"])
        self.assertEqual(self.statements.items()[1], ["aa", "bbb"])
        self.statements.batches[1][1].callback(["A", "B"])
        self.assertEqual(self.statements.items()[2], ["cccc"])
        self.statements.batches[2][1].callback(["C"])
        self.assertEqual(self.statements.items()[3], ["dddddddd"])

    def test_a_failed_statement_fails_exactly_its_calls(self):
        batcher = self.batcher()
        for item in "abc":
            self.submit(batcher, item)
        self.statements.batches[0][1].errback(RuntimeError("the database said no"))
        self.assertTrue(self.results["a"].check(RuntimeError))
        self.assertNotIn("b", self.results)
        self.statements.batches[1][1].callback(["B", "C"])
        self.assertEqual((self.results["b"], self.results["c"]), ("B", "C"))

    def test_a_failure_in_the_results_fails_only_its_own_call(self):
        batcher = self.batcher()
        for item in "abc":
            self.submit(batcher, item)
        self.statements.batches[0][1].callback(["A"])
        self.statements.batches[1][1].callback([Failure(ValueError("refused")), "C"])
        self.assertTrue(self.results["b"].check(ValueError))
        self.assertEqual(self.results["c"], "C")

    def test_a_wrong_number_of_results_fails_the_batch_rather_than_misanswer(self):
        batcher = self.batcher()
        self.submit(batcher, "a")
        self.statements.batches[0][1].callback([])
        self.assertTrue(self.results["a"].check(RuntimeError))
        self.submit(batcher, "b")  # and the next call still goes
        self.assertEqual(self.statements.items(), [["a"], ["b"]])

    def test_a_caller_that_stopped_waiting_is_skipped(self):
        batcher = self.batcher()
        self.submit(batcher, "a")
        gone = batcher.submit("b")
        self.submit(batcher, "c")
        self.statements.batches[0][1].callback(["A"])
        gone.cancel()
        self.failureResultOf(gone, defer.CancelledError)
        self.statements.batches[1][1].callback(["B", "C"])
        self.assertEqual(self.results["c"], "C")

    def test_with_a_reactor_the_calls_of_one_turn_share_a_statement(self):
        clock = task.Clock()
        batcher = self.batcher(reactor=clock, in_flight=2, max_items=2)
        for item in "abcde":
            self.submit(batcher, item)
        self.assertEqual(self.statements.items(), [])  # not before the turn ends
        clock.advance(0)
        # two statements in flight at once, the rest waits
        self.assertEqual(self.statements.items(), [["a", "b"], ["c", "d"]])
        self.statements.batches[1][1].callback(["C", "D"])
        self.assertEqual(self.statements.items()[2], ["e"])
        self.assertEqual(clock.getDelayedCalls(), [])
        self.statements.batches[0][1].callback(["A", "B"])
        self.statements.batches[2][1].callback(["E"])
        self.assertEqual(sorted(self.results.values()), ["A", "B", "C", "D", "E"])

    def test_with_a_reactor_a_lone_call_starts_at_the_end_of_the_turn(self):
        clock = task.Clock()
        batcher = self.batcher(reactor=clock)
        self.submit(batcher, "a")
        clock.advance(0)
        self.assertEqual(self.statements.items(), [["a"]])
        self.statements.batches[0][1].callback(["A"])
        self.assertEqual(self.results, {"a": "A"})
