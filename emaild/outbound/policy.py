"""
What a delivery result means for an outbox row: pure functions, so the
retry rules can be tested without a reactor or a database.
"""

from __future__ import annotations

import attrs

from emaild.config import QoSClass
from emaild.outbound.transport import DeliveryResult, Outcome

#: how long a throttled message waits before it may be claimed again
THROTTLE_REQUEUE_DELAY = 1.0
#: how long to stop sending after the relay says its daily quota is used up
QUOTA_PAUSE = 3600.0


@attrs.frozen
class Decision:
    """
    The new state of one outbox row after an attempt.
    """

    outbox_id: int
    state: str  # queued | sent | failed
    #: attempts after this one (unchanged when the attempt did not count)
    attempts: int
    #: when a requeued row may be claimed again (seconds since the epoch)
    next_attempt_at: float | None
    reason: str
    #: what goes in the attempt log
    outcome: str
    code: int | None
    reply: str


def _describe(result: DeliveryResult) -> str:
    if result.code is None:
        return result.reply
    return f"{result.code} {result.reply}".strip()


def decide(outbox_id: int, attempts: int, qos: QoSClass, result: DeliveryResult,
           now: float, releasing: bool = False) -> Decision:
    """
    @param attempts: attempts that counted before this one.
    @param releasing: the sender is shutting down; a temporary failure is
        the shutdown's doing, so the row goes back without burning an attempt.
    """
    reply = _describe(result)

    def requeue(outcome: str, delay: float, reason: str) -> Decision:
        return Decision(outbox_id, "queued", attempts, now + delay, reason,
                        outcome, result.code, result.reply)

    if result.outcome is Outcome.SENT:
        return Decision(outbox_id, "sent", attempts + 1, None, reply, "sent",
                        result.code, result.reply)
    if result.outcome is Outcome.FAILED:
        return Decision(outbox_id, "failed", attempts + 1, None, reply, "failed",
                        result.code, result.reply)
    if result.outcome is Outcome.THROTTLED:
        return requeue("throttled", THROTTLE_REQUEUE_DELAY, f"throttled by the relay: {reply}")
    if result.outcome is Outcome.QUOTA:
        return requeue("quota", QUOTA_PAUSE, f"relay's daily quota used up: {reply}")
    if releasing:
        return requeue("released", 0.0, f"released at shutdown: {reply}")
    # a temporary failure: retry with the class's backoff, or give up
    done = attempts + 1
    if done >= qos.max_attempts:
        return Decision(outbox_id, "failed", done, None,
                        f"gave up after {done} attempts; last: {reply}",
                        "retry", result.code, result.reply)
    return Decision(outbox_id, "queued", done, now + qos.delay_after(done),
                    f"attempt {done} failed: {reply}", "retry", result.code, result.reply)
