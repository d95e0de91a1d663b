"""
Token-bucket arithmetic for the relay's rate, kept pure: the state lives in
the C{send_buckets} table (one row per bucket, shared by every emaild process
on the database) and the store applies these functions inside the claim
transaction, with the row locked.

Tokens refill continuously from the elapsed time, so the rate is exact
whatever the tick of the loop that claims.  One token is one recipient.
"""

from __future__ import annotations

import attrs

# Small steps, often: the relay's limit is usually just below our rate, so a
# coarse step (x0.7 down, x1.25 up every 10 s) overshoots both ways and
# averages well under the limit.  Measured in bench/rate.py against a 14/s
# relay with the daemon at 20/s: 13.1/s and 11 x 454 per 1000 messages with
# the coarse steps, 14.0/s and ~27 x 454 with these.

#: the rate multiplier after a throttle reply is multiplied by this …
SLOWDOWN_FACTOR = 0.9
#: … but never goes below this
MIN_SLOWDOWN = 0.1
#: every RECOVERY_INTERVAL seconds without a throttle reply …
RECOVERY_INTERVAL = 2.0
#: … the multiplier grows by this factor, back up to 1
RECOVERY_FACTOR = 1.05


@attrs.define
class Bucket:
    name: str
    tokens: float
    refilled_at: float
    slowdown: float = 1.0
    slowed_at: float = 0.0
    paused_until: float = 0.0

    def refill(self, rate: float, burst: float, now: float) -> None:
        if self.slowdown < 1.0 and now - self.slowed_at >= RECOVERY_INTERVAL:
            self.slowdown = min(1.0, self.slowdown * RECOVERY_FACTOR)
            self.slowed_at = now
        if now > self.refilled_at:
            self.tokens = min(burst, self.tokens + (now - self.refilled_at) * rate * self.slowdown)
            self.refilled_at = now

    def available(self, now: float) -> int:
        if now < self.paused_until:
            return 0
        return max(0, int(self.tokens + 1e-9))

    def take(self, n: int) -> None:
        self.tokens -= n

    def wait(self, rate: float, now: float) -> float:
        """
        Seconds until one token is available.
        """
        if now < self.paused_until:
            return self.paused_until - now
        missing = 1.0 - self.tokens
        return max(0.0, missing / (rate * self.slowdown)) if missing > 0 else 0.0

    def throttled(self, now: float) -> None:
        """
        The relay said we are too fast: slow down and empty the bucket.
        """
        if now - self.slowed_at > 0.5 or self.slowdown == 1.0:
            # several throttle replies in the same instant are one event;
            # only a new event restarts the clock, so replies that keep
            # coming keep slowing us down
            self.slowdown = max(MIN_SLOWDOWN, self.slowdown * SLOWDOWN_FACTOR)
            self.slowed_at = now
        self.tokens = min(self.tokens, 0.0)

    def pause(self, until: float) -> None:
        self.paused_until = max(self.paused_until, until)
