"""
The sender: claims due messages from the outbox as fast as the shared token
bucket allows, hands them to the transport, and records every outcome.

It is event-driven: a claim happens when mail is queued (NOTIFY), when a
delivery finishes and frees transport capacity, or when the bucket says the
next token is due.  A LoopingCall heartbeat recovers expired leases and
polls as a safety net for lost notifications.  Results are written back in
small batches (one transaction per batch) so a fast relay does not cost one
commit per message.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from typing import Callable

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from emaild.db.database import DatabaseUnavailable
from emaild.metrics import Metrics
from emaild.outbound.policy import QUOTA_PAUSE, Decision, decide
from emaild.outbound.store import OUTBOX_CHANNEL, OutboxStore, RateLimits
from emaild.outbound.transport import DeliveryResult, Outcome, OutgoingMessage

log = Logger()

#: write results back when this many are waiting …
FLUSH_BATCH = 200
#: … or this long after the first one arrived.  Longer means fewer commits
#: per message at high rates (50 ms: ~20 record transactions a second,
#: +12% msg/s against 10 ms in bench/throughput.py); the cost is that a
#: crash can leave up to this long's worth of delivered-but-unrecorded
#: messages, which are sent again
FLUSH_DELAY = 0.05
#: messages handed to the transport and not finished, per relay connection:
#: enough to keep every connection busy while the next claim transaction
#: runs (we claim again at half the window; under load a claim takes longer
#: than 16 messages per connection last), and to claim in batches rather than
#: one transaction per message.  Rate-limited sending is token-bound and
#: never fills it; lease renewal covers a long window
WINDOW_PER_CONNECTION = 128
#: after a database error, try again after this long
DB_RETRY_DELAY = 1.0
#: the stats counter of each next state of a delivered row
_STATS_KEY = {"sent": "sent", "failed": "failed"}


def make_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Sender(service.Service):
    name = "sender"

    def __init__(self, reactor, store: OutboxStore, transport, config, owner: str | None = None,
                 metrics: Metrics | None = None):
        self.reactor = reactor
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = store
        self.transport = transport
        self.config = config
        self.owner = owner or make_owner()
        relay = config["relay"]
        self.limits = RateLimits(rate=relay["rate"], burst=relay["burst"],
                                 daily_quota=relay["daily_quota"], lease=relay["lease"])
        self.poll_interval = relay["poll_interval"]
        self.window = WINDOW_PER_CONNECTION * relay["connections"]
        self.shutdown_grace = relay["shutdown_grace"]
        self._heartbeat = task.LoopingCall(self._beat)
        self._heartbeat.clock = reactor
        self._timer = None          # the scheduled next claim
        self._pumping = False       # a claim is under way
        self._pump_done: defer.Deferred | None = None  # fires when it is over
        self._again = False         # something asked for a claim meanwhile
        self._stopping = False
        self._in_flight: dict[int, defer.Deferred] = {}
        #: when the lease of each message in flight runs out (our clock)
        self._leases: dict[int, float] = {}
        self._results: list[Decision] = []
        self._throttled = False
        self._pause_until = 0.0
        self._flush_timer = None
        self._flushing: defer.Deferred | None = None
        self._recovering = False    # a lease renewal and recovery is under way
        #: no claim can take a message before this (our clock): the last
        #: claim found the relay's bucket empty until then
        self._claim_not_before = 0.0
        #: how much later than its next token a claim may run and lose no
        #: rate: tokens pile up to the burst meanwhile (see L{_token_wait})
        self._headroom = min(0.5, self.limits.burst - 1.0) / self.limits.rate
        #: when our last claim ran, and whether another sender claimed
        #: from the bucket since the one before (see L{_token_wait})
        self._last_claim = 0.0
        self._shared = False
        #: counters for /healthz and tests
        self.stats = {"claimed": 0, "sent": 0, "failed": 0, "retried": 0,
                      "throttled": 0, "suppressed": 0, "recovered": 0}
        #: (qos, state) -> the inc() of its labelled counter
        self._counters: dict[tuple[str, str], Callable[[], None]] = {}

    # -- life cycle ----------------------------------------------------------
    starting: defer.Deferred | None = None

    def startService(self):  # noqa: N802
        super().startService()
        self._stopping = False
        # the heartbeat renews our leases well before they run out
        self._heartbeat.start(max(0.5, min(self.poll_interval, self.limits.lease / 4)), now=True)
        #: fires once LISTEN is set up (it never fails: polling is the fallback)
        self.starting = defer.ensureDeferred(self._listen())

    async def _listen(self):
        try:
            await self.store.db.listen(OUTBOX_CHANNEL, lambda _payload: self.wake(),
                                       on_recovered=self.wake)
        except Exception:
            log.failure("Cannot LISTEN for new mail; relying on polling")

    def stopService(self):  # noqa: N802
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        """
        Stop claiming; give in-flight deliveries C{shutdown_grace} seconds,
        then abort them (they are released, not failed); write every result.
        """
        self._stopping = True
        if self.starting is not None:  # LISTEN is set up before the database closes
            await self.starting
        if self._heartbeat.running:
            self._heartbeat.stop()
        self._cancel_timer()
        if self._pump_done is not None:
            # a claim under way finishes (and releases what it cannot send)
            # before anything closes under it
            await self._pump_done
        closing = defer.ensureDeferred(self._close_transport())
        await closing
        while self._in_flight:
            await defer.DeferredList(list(self._in_flight.values()))
        await self._flush_until_done()

    async def _close_transport(self):
        closed = self.transport.close()
        bound = self.reactor.callLater(self.shutdown_grace, self._abort_transport)
        try:
            await closed
        finally:
            if bound.active():
                bound.cancel()

    def _abort_transport(self):
        log.warn("{n} deliveries still running after {s}s; aborting them",
                 n=len(self._in_flight), s=self.shutdown_grace)
        self.transport.abort()

    async def _flush_until_done(self):
        if self._flush_timer is not None and self._flush_timer.active():
            self._flush_timer.cancel()
        self._flush_timer = None
        for _ in range(30):
            if not self._results and self._flushing is None:
                return
            if self._flushing is not None:
                await self._flushing
            else:
                await self._flush()
            if self._results:
                await task.deferLater(self.reactor, DB_RETRY_DELAY, lambda: None)
        log.error("Could not record {n} delivery results before shutdown; their leases "
                  "will expire and they will be sent again", n=len(self._results))

    def health(self) -> dict:
        return {
            "state": "stopping" if self._stopping else ("running" if self.running else "stopped"),
            "transport": self.transport.name,
            "in_flight": len(self._in_flight),
            "unrecorded_results": len(self._results),
            **self.stats,
        }

    # -- scheduling ------------------------------------------------------------
    def wake(self) -> None:
        """
        Something changed (mail queued, capacity freed): claim soon.
        """
        if self._stopping or not self.running:
            return
        if self._pumping:
            self._again = True
            return
        self._schedule(self._claim_delay())

    def _claim_delay(self) -> float:
        """
        Seconds until a claim can take anything.  Mail queued while the
        bucket is empty (a NOTIFY for every batch a busy relay processor
        or enqueue writes, dozens a second) waits for the next token rather
        than run a claim that can only find the bucket empty.
        """
        return max(0.0, self._claim_not_before - self.reactor.seconds())

    def _token_wait(self, retry_in: float) -> float:
        """
        When to claim again, C{retry_in} seconds before the bucket's next
        token.  Several senders on one database read the same bucket, so
        they would all wait for the same instant, and the one that came
        first would come first every time and the others never send.  So
        while another sender claims from the bucket too, we come a random
        part of the bucket's headroom later: that loses no rate (the bucket
        keeps filling meanwhile), only the exact spacing of one sender's
        messages, which a sender alone keeps.
        """
        if not self._shared:
            return retry_in
        return retry_in + random.random() * self._headroom

    def _schedule(self, delay: float) -> None:
        if self._stopping:
            return
        if self._timer is not None and self._timer.active():
            if self._timer.getTime() <= self.reactor.seconds() + delay:
                return
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay, self._pump)

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _beat(self):
        # One recovery at a time: a beat while the last one still waits for
        # the database would renew the same leases again.
        if not self._recovering:
            self._recovering = True
            d = defer.ensureDeferred(self._recover())
            d.addErrback(lambda f: log.failure("lease recovery failed", f)
                         if not f.check(DatabaseUnavailable) else None)
            d.addBoth(self._recovered)
        self.wake()

    def _recovered(self, _):
        self._recovering = False

    async def _recover(self):
        now = self.reactor.seconds()
        lease = self.limits.lease
        # Renew only leases past half their time: at high rates a message
        # is done long before, and renewing every message in the window
        # each heartbeat cost as many row updates as sending did.
        due = [i for i, until in self._leases.items() if until - now < lease / 2]
        if due:
            await self.store.renew_leases(self.owner, due, now, lease)
            for i in due:
                if i in self._leases:
                    self._leases[i] = now + lease
        n = await self.store.recover_leases(now)
        if n:
            self.stats["recovered"] += n
            log.warn("Requeued {n} messages whose sending lease expired", n=n)

    def _pump(self):
        self._timer = None
        if self._pumping or self._stopping:
            return
        self._pumping = True
        self._again = False
        d = defer.ensureDeferred(self._claim_and_send())
        d.addErrback(self._pump_failed)
        d.addBoth(self._pumped)
        if self._pumping:
            self._pump_done = d

    def _pump_failed(self, failure):
        if failure.check(DatabaseUnavailable):
            log.warn("Database unavailable while claiming: {e}", e=failure.value)
        else:
            log.failure("claiming from the outbox failed", failure)
        self._schedule(DB_RETRY_DELAY)

    def _pumped(self, _):
        self._pumping = False
        self._pump_done = None
        if self._again:
            self._schedule(self._claim_delay())

    async def _claim_and_send(self):
        capacity = self.window - len(self._in_flight)
        if capacity <= 0:
            return  # a finishing delivery will wake us
        now = self.reactor.seconds()
        result = await self.store.claim(self.owner, now, capacity, self.limits, self.config.qos)
        # the bucket's last refill is our last claim unless another sender
        # claimed in between
        self._shared = bool(self._last_claim) and result.last_refill != self._last_claim
        self._last_claim = now
        self.stats["claimed"] += len(result.messages)
        self.stats["suppressed"] += result.suppressed
        self.metrics.suppressed.inc(result.suppressed)
        for index, claimed in enumerate(result.messages):
            if self._stopping:
                # claimed while we were asked to stop: back to the queue now
                # rather than when their lease runs out
                await self.store.release(self.owner, [c.id for c in result.messages[index:]],
                                         "released: the sender is shutting down")
                break
            self._dispatch(claimed, now + self.limits.lease)
        if self._stopping:
            return
        if len(result.messages) == capacity:
            pass  # the window is full: finishing deliveries will wake us
        elif result.retry_in is not None:
            wait = self._token_wait(result.retry_in) if result.retry_in > 0 else 0.0
            if self._headroom > 0:
                # at most a poll interval: a daily quota's wait lasts hours,
                # and what counts against it may change sooner.  Without
                # headroom (a burst of 1) no wait can be made random, and
                # the senders' claims on wake-ups keep their order mixed
                self._claim_not_before = now + min(wait, self.poll_interval)
            self._schedule(wait)
        else:
            await self._sleep_until_due()

    async def _sleep_until_due(self):
        due = await self.store.next_due()
        delay = self.poll_interval
        if due is not None:
            delay = min(delay, max(0.0, due - self.reactor.seconds()))
        self._schedule(delay)

    # -- delivering ------------------------------------------------------------
    def _dispatch(self, claimed, lease_until: float) -> None:
        message = OutgoingMessage(claimed.id, claimed.envelope_from, claimed.recipient, claimed.data)
        # Called directly rather than through maybeDeferred, and one
        # callback pair rather than an errback and a callback: this runs
        # once per message.
        try:
            d = self.transport.deliver(message)
        except Exception:
            d = defer.fail()
        self._in_flight[claimed.id] = d
        self._leases[claimed.id] = lease_until
        d.addCallbacks(self._delivered, self._transport_failed,
                       callbackArgs=(claimed,), errbackArgs=(claimed,))

    def _transport_failed(self, failure, claimed) -> None:
        self._delivered(DeliveryResult(Outcome.RETRY, None, f"transport error: {failure.value}"),
                        claimed)

    def _count(self, qos: str, state: str) -> None:
        """One outcome in the stats and the metrics (labelled counters cached)."""
        self.stats[_STATS_KEY.get(state, "retried")] += 1
        inc = self._counters.get((qos, state))
        if inc is None:
            metric = {"sent": self.metrics.sent,
                      "failed": self.metrics.failed}.get(state, self.metrics.retried)
            inc = self._counters[qos, state] = metric.labels(qos).inc
        inc()

    def _delivered(self, result: DeliveryResult, claimed) -> None:
        del self._in_flight[claimed.id]
        del self._leases[claimed.id]
        now = self.reactor.seconds()
        qos = self.config.qos_class(claimed.qos)
        decision = decide(claimed.id, claimed.attempts, qos, result, now,
                          releasing=self._stopping)
        self._count(claimed.qos, decision.state)
        if result.outcome is Outcome.THROTTLED:
            self.metrics.throttled.inc()
            self.stats["throttled"] += 1
            self._throttled = True
        elif result.outcome is Outcome.QUOTA:
            self._pause_until = max(self._pause_until, now + QUOTA_PAUSE)
        if decision.state == "failed":
            log.info("Message {id} to {to} failed: {why}", id=claimed.id,
                     to=claimed.recipient, why=decision.reason)
        self._results.append(decision)
        if len(self._results) >= FLUSH_BATCH:
            self._start_flush()
        elif self._flush_timer is None:
            self._flush_timer = self.reactor.callLater(FLUSH_DELAY, self._start_flush)
        # a finished delivery frees room in the window; but when a claim is
        # already scheduled (the bucket said when the next token comes),
        # claiming earlier would only find the bucket empty
        if len(self._in_flight) <= self.window // 2 and not (
                self._timer is not None and self._timer.active()):
            self.wake()

    def _start_flush(self) -> None:
        if self._flush_timer is not None:
            if self._flush_timer.active():
                self._flush_timer.cancel()
            self._flush_timer = None
        if self._flushing is None and self._results:
            d = defer.ensureDeferred(self._flush())
            if not d.called:
                self._flushing = d
                d.addBoth(self._flushed)

    def _flushed(self, _):
        self._flushing = None
        if self._results and self._flush_timer is None and not self._stopping:
            self._start_flush()

    async def _flush(self):
        batch, self._results = self._results, []
        throttled, self._throttled = self._throttled, False
        pause, self._pause_until = self._pause_until, 0.0
        try:
            latencies = await self.store.record(self.owner, batch, self.reactor.seconds(),
                                                throttled=throttled, pause_until=pause)
        except Exception as e:
            # keep them: the messages were sent (or not); we must not forget
            self._results[:0] = batch
            self._throttled = self._throttled or throttled
            self._pause_until = max(self._pause_until, pause)
            if isinstance(e, DatabaseUnavailable):
                log.warn("Database unavailable; {n} results wait to be recorded", n=len(batch))
            else:
                log.failure("recording delivery results failed")
            if not self._stopping and self._flush_timer is None:
                self._flush_timer = self.reactor.callLater(DB_RETRY_DELAY, self._start_flush)
        else:
            for seconds in latencies or ():
                self.metrics.send_latency.observe(max(0.0, seconds))
