"""
The outbox tables through OutboxStore, against a real PostgreSQL.
"""

from __future__ import annotations

from twisted.internet import defer

from emaild.db.migrations import migrate
from emaild.outbound.policy import decide
from emaild.outbound.store import RateLimits
from emaild.outbound.transport import DeliveryResult, Outcome
from tests.support import DatabaseTestCase, record_statements

NOW = 1_900_000_000.0  # a fixed instant (2030) for deterministic buckets


def limits(rate=1000.0, burst=1000.0, daily_quota=0, lease=60.0):
    return RateLimits(rate=rate, burst=burst, daily_quota=daily_quota, lease=lease)


class StoreTestCase(DatabaseTestCase):
    def setUp(self):
        d = super().setUp()
        d.addCallback(lambda _: self._store())
        return d

    def _store(self):
        self.cfg = self.config()
        hs = self.homeserver(self.cfg)
        self.store = hs.get_outbox_store()
        self.outbox = hs.get_outbox()

    async def enqueue(self, addresses, qos=None, template="plain"):
        report = await self.outbox.enqueue(
            template, [(a, {"subject": f"Hi {a}", "body": "Hello"}) for a in addresses], qos=qos)
        # rows are due from the database's now(); make them due at NOW too
        self.query("UPDATE outbox SET next_attempt_at = to_timestamp(%s)", (NOW - 1,))
        return report.ids


class EnqueueTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_one_row_per_recipient_with_its_own_envelope(self):
        ids = yield defer.ensureDeferred(self.enqueue(["a@example.org", "b@example.org"]))
        rows = self.query("SELECT id, recipient, envelope_from, state, qos, priority FROM outbox ORDER BY id")
        self.assertEqual([r[0] for r in rows], ids)
        self.assertEqual([r[1] for r in rows], ["a@example.org", "b@example.org"])
        self.assertEqual({r[3] for r in rows}, {"queued"})
        self.assertNotEqual(rows[0][2], rows[1][2])
        self.assertTrue(rows[0][2].endswith("@localhost"))
        self.assertEqual(rows[0][4:], ("default", 50))

    @defer.inlineCallbacks
    def test_bad_rows_are_reported_and_the_rest_queued(self):
        report = yield defer.ensureDeferred(self.outbox.enqueue(
            "plain", [("ok@example.org", {"subject": "s", "body": "b"}),
                      ("not an address", {"subject": "s", "body": "b"}),
                      ("missing@example.org", {"subject": "s"})]))
        self.assertEqual(len(report.ids), 1)
        self.assertEqual([r.index for r in report.rejected], [1, 2])
        self.assertIn("not a valid e-mail address", report.rejected[0].reason)
        self.assertIn("'body' is undefined", report.rejected[1].reason)

    @defer.inlineCallbacks
    def test_migrations_run_twice_change_nothing(self):
        applied = yield defer.ensureDeferred(migrate(self.db))
        self.assertEqual(applied, [])


class ClaimTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_claim_marks_sending_under_lease_in_priority_order(self):
        yield defer.ensureDeferred(self.enqueue(["bulk@example.org"], qos="bulk"))
        yield defer.ensureDeferred(self.enqueue(["urgent@example.org"], qos="transactional"))
        result = yield self.store.claim("me", NOW, 10, limits(), self.cfg.qos)
        self.assertEqual([m.recipient for m in result.messages],
                         ["urgent@example.org", "bulk@example.org"])
        rows = self.query("SELECT state, lease_owner, extract(epoch from lease_until) FROM outbox")
        self.assertEqual({(r[0], r[1], float(r[2])) for r in rows}, {("sending", "me", NOW + 60)})

    @defer.inlineCallbacks
    def test_concurrent_claims_never_share_a_row(self):
        yield defer.ensureDeferred(self.enqueue([f"r{i}@example.org" for i in range(40)]))
        results = yield defer.gatherResults([
            defer.ensureDeferred(self.store.claim(f"owner{i}", NOW, 15, limits(), self.cfg.qos))
            for i in range(3)])
        ids = [m.id for r in results for m in r.messages]
        self.assertEqual(len(ids), len(set(ids)))
        self.assertEqual(len(ids), 40)

    @defer.inlineCallbacks
    def test_bucket_limits_claims_and_refills_with_time(self):
        yield defer.ensureDeferred(self.enqueue([f"r{i}@example.org" for i in range(30)]))
        lim = limits(rate=10.0, burst=5.0)
        first = yield self.store.claim("me", NOW, 100, lim, self.cfg.qos)
        self.assertEqual(len(first.messages), 5)  # the burst
        self.assertAlmostEqual(first.retry_in, 0.1, places=6)
        empty = yield self.store.claim("me", NOW, 100, lim, self.cfg.qos)
        self.assertEqual(empty.messages, [])
        self.assertAlmostEqual(empty.retry_in, 0.1, places=6)
        later = yield self.store.claim("me", NOW + 0.35, 100, lim, self.cfg.qos)
        self.assertEqual(len(later.messages), 3)  # 3.5 tokens refilled

    @defer.inlineCallbacks
    def test_the_bucket_is_made_once_then_only_locked(self):
        yield defer.ensureDeferred(self.enqueue([f"r{i}@example.org" for i in range(8)]))
        lim = limits(rate=10.0, burst=3.0)
        first = yield self.store.claim("me", NOW, 100, lim, self.cfg.qos)
        self.assertEqual(len(first.messages), 3)  # made full
        sent = record_statements(self)
        yield self.store.claim("me", NOW + 0.1, 100, lim, self.cfg.qos)
        bucket_statements = [s for s in sent if "_bucket" in s]
        self.assertEqual([s.split("(")[0].split()[-1] for s in bucket_statements],
                         ["outbound_lock_bucket", "outbound_save_bucket"])
        # a bucket whose row is gone is made again, full
        self.query("DELETE FROM send_buckets")
        again = yield self.store.claim("me", NOW + 0.2, 100, lim, self.cfg.qos)
        self.assertEqual(len(again.messages), 3)

    @defer.inlineCallbacks
    def test_qos_rate_caps_its_class_only(self):
        yield defer.ensureDeferred(self.enqueue([f"b{i}@example.org" for i in range(5)], qos="bulk"))
        yield defer.ensureDeferred(self.enqueue([f"d{i}@example.org" for i in range(5)]))
        cfg = self.config(**{"qos__bulk": {"rate": 1.0}})
        result = yield self.store.claim("me", NOW, 100, limits(), cfg.qos)
        classes = sorted(m.qos for m in result.messages)
        self.assertEqual(classes, ["bulk"] + ["default"] * 5)

    @defer.inlineCallbacks
    def test_suppressed_addresses_end_suppressed_with_reason(self):
        yield defer.ensureDeferred(self.enqueue(["Gone@Example.org", "ok@example.org"]))
        yield defer.ensureDeferred(self.store.suppress("gone@example.org", "hard bounce 550 5.1.1"))
        result = yield self.store.claim("me", NOW, 10, limits(), self.cfg.qos)
        self.assertEqual([m.recipient for m in result.messages], ["ok@example.org"])
        self.assertEqual(result.suppressed, 1)
        rows = self.query("SELECT state, reason FROM outbox WHERE recipient = 'Gone@Example.org'")
        self.assertEqual(rows, [("suppressed", "suppressed: hard bounce 550 5.1.1")])

    @defer.inlineCallbacks
    def test_suppressions_are_readable(self):
        yield defer.ensureDeferred(self.store.suppress("Gone@Example.org", "3 hard bounces"))
        yield defer.ensureDeferred(self.store.suppress("spam@example.org", "complaint"))
        rows = yield defer.ensureDeferred(self.store.suppressions())
        self.assertEqual(sorted((s.address, s.reason) for s in rows),
                         [("gone@example.org", "3 hard bounces"), ("spam@example.org", "complaint")])
        rows = yield defer.ensureDeferred(self.store.suppressions(["GONE@example.org", "x@y.org"]))
        self.assertEqual([(s.address, s.reason) for s in rows],
                         [("gone@example.org", "3 hard bounces")])
        self.assertIsNotNone(rows[0].created_at)
        self.assertEqual((yield defer.ensureDeferred(self.store.suppressions([]))), [])

    @defer.inlineCallbacks
    def test_daily_quota_counts_sent_and_in_flight(self):
        yield defer.ensureDeferred(self.enqueue([f"r{i}@example.org" for i in range(10)]))
        lim = limits(daily_quota=4)
        first = yield self.store.claim("me", NOW, 3, lim, self.cfg.qos)
        qos = self.cfg.qos["default"]
        ok = DeliveryResult(Outcome.SENT, 250, "ok")
        yield self.store.record("me", [decide(m.id, 0, qos, ok, NOW) for m in first.messages[:2]], NOW)
        second = yield self.store.claim("me", NOW, 10, lim, self.cfg.qos)
        self.assertEqual(len(second.messages), 1)  # 2 sent + 1 sending + 1 = 4
        third = yield self.store.claim("me", NOW, 10, lim, self.cfg.qos)
        self.assertEqual(third.messages, [])
        self.assertGreater(third.retry_in, 0)  # until the next UTC day
        self.assertLessEqual(third.retry_in, 86400)


class RecordTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_every_attempt_is_kept_and_backoff_applies(self):
        yield defer.ensureDeferred(self.enqueue(["a@example.org"]))
        qos = self.cfg.qos["default"]
        (m,) = (yield self.store.claim("me", NOW, 1, limits(), self.cfg.qos)).messages
        busy = DeliveryResult(Outcome.RETRY, 451, "4.3.0 try later")
        yield self.store.record("me", [decide(m.id, m.attempts, qos, busy, NOW)], NOW)
        row = self.query("SELECT state, attempts, extract(epoch from next_attempt_at), reason FROM outbox")[0]
        self.assertEqual(row[:2], ("queued", 1))
        self.assertEqual(float(row[2]), NOW + qos.backoff[0])
        self.assertIn("451 4.3.0 try later", row[3])
        early = yield self.store.claim("me", NOW + 1, 1, limits(), self.cfg.qos)
        self.assertEqual(early.messages, [])
        (m,) = (yield self.store.claim("me", NOW + qos.backoff[0], 1, limits(), self.cfg.qos)).messages
        self.assertEqual(m.attempts, 1)
        no = DeliveryResult(Outcome.FAILED, 550, "5.1.1 no such user")
        yield self.store.record("me", [decide(m.id, m.attempts, qos, no, NOW)], NOW)
        state, history = yield defer.ensureDeferred(self.store.history(m.id))
        self.assertEqual((state.state, state.reason, state.attempts),
                         ("failed", "550 5.1.1 no such user", 2))
        self.assertEqual([(h.outcome, h.code) for h in history], [("retry", 451), ("failed", 550)])

    @defer.inlineCallbacks
    def test_throttle_requeues_without_burning_and_slows_the_bucket(self):
        yield defer.ensureDeferred(self.enqueue(["a@example.org"]))
        qos = self.cfg.qos["default"]
        (m,) = (yield self.store.claim("me", NOW, 1, limits(), self.cfg.qos)).messages
        slow = DeliveryResult(Outcome.THROTTLED, 454, "Throttling failure: Maximum sending rate exceeded.")
        yield self.store.record("me", [decide(m.id, 0, qos, slow, NOW)], NOW, throttled=True)
        self.assertEqual(self.query("SELECT state, attempts FROM outbox"), [("queued", 0)])
        (slowdown, tokens), = self.query("SELECT slowdown, tokens FROM send_buckets WHERE name = 'relay'")
        self.assertLess(slowdown, 1.0)
        self.assertLessEqual(tokens, 0.0)

    @defer.inlineCallbacks
    def test_results_from_a_lost_lease_do_not_overwrite_the_new_owner(self):
        yield defer.ensureDeferred(self.enqueue(["a@example.org"]))
        qos = self.cfg.qos["default"]
        (m,) = (yield self.store.claim("old", NOW, 1, limits(lease=5), self.cfg.qos)).messages
        recovered = yield self.store.recover_leases(NOW + 6)
        self.assertEqual(recovered, 1)
        (m2,) = (yield self.store.claim("new", NOW + 6, 1, limits(), self.cfg.qos)).messages
        self.assertEqual(m2.id, m.id)
        ok = DeliveryResult(Outcome.SENT, 250, "ok")
        yield self.store.record("old", [decide(m.id, 0, qos, ok, NOW)], NOW + 7)
        self.assertEqual(self.query("SELECT state, lease_owner FROM outbox"), [("sending", "new")])
        outcomes = [r[0] for r in self.query("SELECT outcome FROM outbox_attempts ORDER BY id")]
        self.assertEqual(outcomes, ["expired", "sent"])

    @defer.inlineCallbacks
    def test_a_mixed_batch_is_recorded_row_by_row(self):
        # sent rows take their own statement, the others the general one:
        # every row gets its own outcome, and every attempt is logged once
        yield defer.ensureDeferred(self.enqueue([f"{c}@example.org" for c in "abcd"]))
        qos = self.cfg.qos["default"]
        claimed = (yield self.store.claim("me", NOW, 4, limits(), self.cfg.qos)).messages
        a, b, c, d = sorted(claimed, key=lambda m: m.recipient)
        results = {a: DeliveryResult(Outcome.SENT, 250, "2.0.0 queued as A"),
                   b: DeliveryResult(Outcome.FAILED, 550, "5.1.1 no such user"),
                   c: DeliveryResult(Outcome.RETRY, 451, "4.3.0 \"busy\" {x}"),
                   d: DeliveryResult(Outcome.SENT, 250, "2.0.0 queued as D")}
        decisions = [decide(m.id, m.attempts, qos, r, NOW) for m, r in results.items()]
        latencies = yield self.store.record("me", decisions, NOW + 1)
        self.assertEqual(len(latencies), 2)
        rows = self.query("SELECT recipient, state, attempts, reason, finished_at IS NOT NULL,"
                          " lease_owner FROM outbox ORDER BY recipient")
        self.assertEqual(rows, [
            ("a@example.org", "sent", 1, "250 2.0.0 queued as A", True, None),
            ("b@example.org", "failed", 1, "550 5.1.1 no such user", True, None),
            ("c@example.org", "queued", 1, 'attempt 1 failed: 451 4.3.0 "busy" {x}', False, None),
            ("d@example.org", "sent", 1, "250 2.0.0 queued as D", True, None)])
        logged = self.query("SELECT o.recipient, a.outcome, a.code, a.reply, a.sender"
                            " FROM outbox_attempts a JOIN outbox o ON o.id = a.outbox_id"
                            " ORDER BY o.recipient")
        self.assertEqual(logged, [
            ("a@example.org", "sent", 250, "2.0.0 queued as A", "me"),
            ("b@example.org", "failed", 550, "5.1.1 no such user", "me"),
            ("c@example.org", "retry", 451, '4.3.0 "busy" {x}', "me"),
            ("d@example.org", "sent", 250, "2.0.0 queued as D", "me")])
        self.assertEqual(self.query("SELECT sent FROM send_daily_usage"), [(2,)])

    @defer.inlineCallbacks
    def test_counts_have_every_state(self):
        yield defer.ensureDeferred(self.enqueue(["a@example.org", "b@example.org"], qos="bulk"))
        counts = yield defer.ensureDeferred(self.store.counts())
        self.assertEqual(counts["queued"], {"bulk": 2})
        self.assertEqual(set(counts), {"queued", "sending", "sent", "failed", "suppressed"})
