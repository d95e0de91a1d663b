"""
The sender against a real PostgreSQL: timing driven by a Clock (retry and
backoff, throttling, shutdown) with a scripted transport, and the real
reactor with several senders sharing one database.
"""

from __future__ import annotations

import time

from twisted.internet import defer, reactor, task

from emaild.db.database import Database
from emaild.outbound.sender import Sender
from emaild.outbound.store import OutboxStore
from emaild.outbound.transport import DeliveryResult, Outcome
from tests.fakes import SENT, ScriptedTransport
from tests.support import DatabaseTestCase, wait_for

BUSY = DeliveryResult(Outcome.RETRY, 451, "4.3.0 mailbox busy")
THROTTLE = DeliveryResult(Outcome.THROTTLED, 454, "Throttling failure: Maximum sending rate exceeded.")


class ClockedSenderTests(DatabaseTestCase):
    """
    The sender's timers run on a Clock; database I/O on the real reactor.
    """

    def make_sender(self, script, **relay):
        self.clock = task.Clock()
        self.clock.advance(time.time())
        relay = {"rate": 1000, "burst": 1000, "poll_interval": "5s", **relay}
        self.cfg = self.config(relay=relay, **{"qos__default": {"backoff": ["30s", "5m"], "max_attempts": 4}})
        hs = self.homeserver(self.cfg)
        self.store = hs.get_outbox_store()
        self.outbox = hs.get_outbox()
        self.transport = ScriptedTransport(self.clock, script)
        self.sender = Sender(self.clock, self.store, self.transport, self.cfg, owner="test")
        return self.sender

    async def start(self):
        self.sender.startService()
        await self.sender.starting
        self.addCleanup(lambda: self.sender.running and self.stop())

    def stop(self):
        d = self.sender.stopService()
        self.clock.advance(60)  # past any shutdown bound
        return d

    def settled(self):
        s = self.sender
        if s._flush_timer is not None and s._flush_timer.active():
            # results are written back a few milliseconds after they arrive
            self.clock.advance(max(0.0, s._flush_timer.getTime() - self.clock.seconds()))
        return not s._pumping and s._flushing is None and (
            s._flush_timer is None or not s._flush_timer.active())

    async def drive(self, seconds: float, step: float = 0.25):
        """
        Let C{seconds} of Clock time pass in steps, letting the database
        catch up after each.
        """
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end - 1e-9:
            self.clock.advance(min(step, end - self.clock.seconds()))
            await task.deferLater(reactor, 0.002, lambda: None)
            await wait_for(self.settled, timeout=5, interval=0.002)

    async def enqueue(self, *addresses):
        report = await self.outbox.enqueue(
            "plain", [(a, {"subject": "s", "body": "b"}) for a in addresses])
        # queued "now" by the database's clock; the Clock may be a little behind
        self.query("UPDATE outbox SET next_attempt_at = to_timestamp(%s)", (self.clock.seconds(),))
        return report.ids

    def attempt_times(self, t0):
        return [round(t - t0) for t, _, _ in self.transport.log]

    @defer.inlineCallbacks
    def test_retry_follows_the_backoff_then_sends(self):
        self.make_sender(lambda m, n: BUSY if n < 3 else SENT)
        yield defer.ensureDeferred(self.start())
        t0 = self.clock.seconds()
        (mid,) = yield defer.ensureDeferred(self.enqueue("a@example.org"))
        yield defer.ensureDeferred(self.drive(400, step=1))
        first, second, third = self.attempt_times(t0)
        self.assertLessEqual(first, 1)  # the Clock moves in 1 s steps
        self.assertEqual((second - first, third - second), (30, 300))
        self.assertEqual(self.query("SELECT state, attempts FROM outbox"), [("sent", 3)])
        outcomes = self.query("SELECT outcome, code FROM outbox_attempts ORDER BY id")
        self.assertEqual(outcomes, [("retry", 451), ("retry", 451), ("sent", 250)])

    @defer.inlineCallbacks
    def test_gives_up_after_max_attempts_with_the_last_reply(self):
        self.make_sender(lambda m, n: BUSY)
        yield defer.ensureDeferred(self.start())
        yield defer.ensureDeferred(self.enqueue("a@example.org"))
        yield defer.ensureDeferred(self.drive(30 + 300 * 3 + 10, step=5))
        self.assertEqual(len(self.transport.log), 4)
        (state, attempts, reason), = self.query("SELECT state, attempts, reason FROM outbox")
        self.assertEqual((state, attempts), ("failed", 4))
        self.assertEqual(reason, "gave up after 4 attempts; last: 451 4.3.0 mailbox busy")

    @defer.inlineCallbacks
    def test_permanent_failure_is_not_retried(self):
        self.make_sender(lambda m, n: DeliveryResult(Outcome.FAILED, 550, "5.1.1 unknown user"))
        yield defer.ensureDeferred(self.start())
        yield defer.ensureDeferred(self.enqueue("a@example.org"))
        yield defer.ensureDeferred(self.drive(100, step=5))
        self.assertEqual(len(self.transport.log), 1)
        self.assertEqual(self.query("SELECT state, reason FROM outbox"),
                         [("failed", "550 5.1.1 unknown user")])

    @defer.inlineCallbacks
    def test_throttling_requeues_without_an_attempt_and_slows_then_restores(self):
        self.make_sender(lambda m, n: THROTTLE if n == 1 else SENT, rate=10, burst=1)
        yield defer.ensureDeferred(self.start())
        yield defer.ensureDeferred(self.enqueue("a@example.org"))
        yield defer.ensureDeferred(self.drive(0.5, step=0.05))
        (slowdown,), = self.query("SELECT slowdown FROM send_buckets WHERE name = 'relay'")
        self.assertLess(slowdown, 1.0)
        yield defer.ensureDeferred(self.drive(3, step=0.1))
        self.assertEqual(self.query("SELECT state, attempts FROM outbox"), [("sent", 1)])
        self.assertEqual([r.outcome for _, _, r in self.transport.log],
                         [Outcome.THROTTLED, Outcome.SENT])
        # without further throttling the rate comes back to normal
        yield defer.ensureDeferred(self.enqueue("b@example.org"))
        yield defer.ensureDeferred(self.drive(120, step=2))
        (slowdown,), = self.query("SELECT slowdown FROM send_buckets WHERE name = 'relay'")
        self.assertEqual(slowdown, 1.0)

    @defer.inlineCallbacks
    def test_rate_is_exact_over_time(self):
        self.make_sender(lambda m, n: SENT, rate=4, burst=2)
        yield defer.ensureDeferred(self.start())
        yield defer.ensureDeferred(self.enqueue(*[f"r{i}@example.org" for i in range(100)]))
        t0 = self.clock.seconds()
        # the clock moves in 50 ms steps: every pump is late by up to a step,
        # and the bucket must not lose the time it was late by
        yield defer.ensureDeferred(self.drive(10, step=0.05))
        # two at once (the burst) and then 4 per second
        self.assertIn(len(self.transport.log), (41, 42))
        self.assertLess(self.transport.log[1][0] - t0, 0.1)
        gaps = [b[0] - a[0] for a, b in zip(self.transport.log[1:], self.transport.log[2:])]
        self.assertTrue(all(g >= 0.2 - 1e-6 for g in gaps), gaps)

    @defer.inlineCallbacks
    def test_wake_ups_while_the_bucket_is_empty_wait_for_its_next_token(self):
        # every batch the relay processor queues is a NOTIFY: while the
        # bucket is empty, none of them may run a claim that cannot send
        self.make_sender(lambda m, n: SENT, rate=4, burst=2)
        yield defer.ensureDeferred(self.start())
        yield defer.ensureDeferred(self.enqueue(*[f"r{i}@example.org" for i in range(10)]))
        t0 = self.clock.seconds()
        yield defer.ensureDeferred(self.drive(0.05, step=0.05))
        self.assertEqual(len(self.transport.log), 2)  # the burst; the next token at +0.25 s
        claims = []
        claim = self.store.claim

        def counting(*args, **kwargs):
            claims.append(self.clock.seconds() - t0)
            return claim(*args, **kwargs)

        self.store.claim = counting
        for _ in range(18):
            self.sender.wake()
            yield defer.ensureDeferred(self.drive(0.01, step=0.01))
        self.assertEqual(claims, [])
        yield defer.ensureDeferred(self.drive(0.1, step=0.01))
        self.assertEqual(len(claims), 1)
        self.assertGreaterEqual(claims[0], 0.25 - 1e-6)
        self.assertEqual(len(self.transport.log), 3)

    def test_only_a_shared_bucket_makes_the_next_claim_later_by_chance(self):
        sender = self.make_sender(lambda m, n: SENT, rate=10, burst=5)
        self.assertEqual({sender._token_wait(0.1) for _ in range(20)}, {0.1})
        sender._shared = True
        waits = {sender._token_wait(0.1) for _ in range(20)}
        self.assertGreater(len(waits), 1)
        # no later than the headroom: half a token's time (5 tokens pile up)
        self.assertTrue(all(0.1 <= w <= 0.1 + 0.05 for w in waits), waits)
        # a burst of one token has no headroom: nothing is left to chance
        self.assertEqual(self.make_sender(lambda m, n: SENT, rate=10, burst=1)._headroom, 0.0)

    @defer.inlineCallbacks
    def test_shutdown_releases_deliveries_that_do_not_finish(self):
        hanging = []
        self.make_sender(lambda m, n: hanging.append(defer.Deferred()) or hanging[-1],
                         shutdown_grace="2s")
        yield defer.ensureDeferred(self.start())
        yield defer.ensureDeferred(self.enqueue("a@example.org", "b@example.org"))
        yield defer.ensureDeferred(self.drive(0.5, step=0.1))
        self.assertEqual(len(hanging), 2)
        stopping = self.sender.stopService()
        self.clock.advance(1)
        self.assertFalse(self.transport.aborted)
        self.clock.advance(1.5)
        self.assertTrue(self.transport.aborted)
        yield stopping
        rows = self.query("SELECT state, attempts, reason FROM outbox ORDER BY id")
        self.assertEqual([r[:2] for r in rows], [("queued", 0), ("queued", 0)])
        self.assertTrue(all(r[2].startswith("released at shutdown") for r in rows))

    @defer.inlineCallbacks
    def test_stopping_during_a_claim_waits_for_it_and_releases_what_it_took(self):
        sent = []
        self.make_sender(lambda m, n: sent.append(m) or defer.succeed(None))
        yield defer.ensureDeferred(self.enqueue("a@example.org", "b@example.org"))
        gate, real_claim = defer.Deferred(), self.store.claim

        async def slow_claim(*args, **kwargs):
            result = await real_claim(*args, **kwargs)  # the rows are ours now…
            await gate  # …and the stop request comes before the answer
            return result

        self.store.claim = slow_claim
        yield defer.ensureDeferred(self.start())
        self.sender.wake()
        self.clock.advance(0.1)
        yield wait_for(lambda: self.query(
            "SELECT count(*) FROM outbox WHERE state = 'sending'")[0][0] == 2)
        stopping = self.stop()
        self.assertFalse(stopping.called)  # nothing closes under the claim
        gate.callback(None)
        yield stopping
        self.assertEqual(sent, [])
        rows = self.query("SELECT state, attempts, reason FROM outbox ORDER BY id")
        self.assertEqual(rows, [("queued", 0, "released: the sender is shutting down")] * 2)

    @defer.inlineCallbacks
    def test_a_slow_delivery_keeps_its_lease(self):
        hanging = defer.Deferred()
        self.make_sender(lambda m, n: hanging, lease="4s")
        yield defer.ensureDeferred(self.start())
        yield defer.ensureDeferred(self.enqueue("a@example.org"))
        yield defer.ensureDeferred(self.drive(20, step=0.5))
        (state, owner, until), = self.query(
            "SELECT state, lease_owner, extract(epoch FROM lease_until) FROM outbox")
        self.assertEqual((state, owner), ("sending", "test"))
        self.assertGreater(float(until), self.clock.seconds())
        self.assertEqual((yield self.store.recover_leases(self.clock.seconds())), 0)
        hanging.callback(SENT)
        yield defer.ensureDeferred(self.drive(0.5, step=0.1))
        self.assertEqual(self.query("SELECT state FROM outbox"), [("sent",)])

    @defer.inlineCallbacks
    def test_leases_are_renewed_only_past_half_their_time(self):
        # renewing every message in flight on every heartbeat cost as many
        # row updates as sending them; a lease is renewed once half gone
        hanging = defer.Deferred()
        self.make_sender(lambda m, n: hanging, lease="40s", poll_interval="1s")
        renewed = []
        renew = self.store.renew_leases
        self.store.renew_leases = lambda owner, ids, now, lease: (
            renewed.append((list(ids), now)) or renew(owner, ids, now, lease))
        yield defer.ensureDeferred(self.start())
        (row_id,) = yield defer.ensureDeferred(self.enqueue("a@example.org"))
        yield defer.ensureDeferred(self.drive(15, step=1.0))
        self.assertEqual(renewed, [])
        yield defer.ensureDeferred(self.drive(10, step=1.0))
        self.assertEqual([ids for ids, _ in renewed], [[row_id]])
        (until,), = self.query("SELECT extract(epoch FROM lease_until) FROM outbox")
        self.assertLess(abs(float(until) - (renewed[0][1] + 40)), 0.01)
        hanging.callback(SENT)
        yield defer.ensureDeferred(self.drive(0.5, step=0.1))
        self.assertEqual(self.query("SELECT state FROM outbox"), [("sent",)])

    @defer.inlineCallbacks
    def test_a_slow_renewal_is_not_repeated_by_the_next_heartbeats(self):
        # heartbeats while a renewal still waits for the database must not
        # renew the same leases again
        hanging = defer.Deferred()
        self.make_sender(lambda m, n: hanging, lease="40s", poll_interval="1s")
        renewed, slow = [], defer.Deferred()
        renew = self.store.renew_leases

        async def slow_renew(owner, ids, now, lease):
            renewed.append(list(ids))
            await slow
            await renew(owner, ids, now, lease)

        self.store.renew_leases = slow_renew
        yield defer.ensureDeferred(self.start())
        (row_id,) = yield defer.ensureDeferred(self.enqueue("a@example.org"))
        yield defer.ensureDeferred(self.drive(25, step=1.0))
        self.assertEqual(renewed, [[row_id]])
        slow.callback(None)
        hanging.callback(SENT)
        yield defer.ensureDeferred(self.drive(0.5, step=0.1))
        self.assertEqual(self.query("SELECT state FROM outbox"), [("sent",)])

    @defer.inlineCallbacks
    def test_new_mail_wakes_an_idle_sender_without_polling(self):
        self.make_sender(lambda m, n: SENT, poll_interval="1h")
        yield defer.ensureDeferred(self.start())
        yield defer.ensureDeferred(self.drive(1))
        # queued by someone else: only the NOTIFY can wake this sender
        yield defer.ensureDeferred(self.enqueue("a@example.org"))
        yield wait_for(lambda: self.sender._timer is not None and self.sender._timer.active())
        yield defer.ensureDeferred(self.drive(0.1, step=0.05))
        self.assertEqual(len(self.transport.log), 1)


class SharedDatabaseTests(DatabaseTestCase):
    """
    Several senders (as in several emaild processes) on one database, each
    with its own connection pool, on the real reactor.
    """

    @defer.inlineCallbacks
    def test_two_senders_never_send_a_message_twice_and_share_the_rate(self):
        rate, burst, count = 20.0, 2.0, 60
        cfg = self.config(relay={"rate": rate, "burst": burst, "poll_interval": "1s"})
        senders, transports = [], []
        for i in range(2):
            db = Database(reactor, self.dsn, pool_size=2)
            yield defer.ensureDeferred(db.start())
            self.addCleanup(db.close)
            transport = ScriptedTransport(reactor)
            sender = Sender(reactor, OutboxStore(db), transport, cfg, owner=f"daemon{i}")
            sender.startService()
            yield sender.starting
            self.addCleanup(sender.stopService)
            senders.append(sender)
            transports.append(transport)
        outbox = self.homeserver(cfg, self.db).get_outbox()
        # the shared bucket holds at most `burst` tokens now (nothing sent yet)
        before_enqueue = reactor.seconds()
        yield defer.ensureDeferred(outbox.enqueue(
            "plain", [(f"r{i}@example.org", {"subject": "s", "body": "b"}) for i in range(count)]))
        yield wait_for(lambda: sum(len(t.log) for t in transports) == count, timeout=120)
        sent = [m.id for t in transports for m in [x[1] for x in t.log]]
        self.assertEqual(len(sent), len(set(sent)))
        self.assertTrue(all(t.log for t in transports), "both senders took part")
        times = sorted(x[0] for t in transports for x in t.log)
        # the last claim needed count - burst tokens refilled after the
        # enqueue: load can only make the last delivery later (a spread from
        # the first delivery is not bounded so: the first can be late too)
        self.assertGreaterEqual(times[-1] - before_enqueue, (count - burst) / rate - 0.01)
        yield wait_for(lambda: self.query("SELECT count(*) FROM outbox WHERE state = 'sent'")[0][0] == count)
