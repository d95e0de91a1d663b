"""
Token-bucket arithmetic (pure).
"""

from twisted.trial import unittest

from emaild.outbound.bucket import SLOWDOWN_FACTOR, Bucket


class BucketTests(unittest.TestCase):
    def test_throttle_replies_that_keep_coming_keep_slowing_down(self):
        bucket = Bucket("relay", tokens=5, refilled_at=0.0)
        bucket.throttled(1.0)
        bucket.throttled(1.1)  # the same instant: one event
        self.assertAlmostEqual(bucket.slowdown, SLOWDOWN_FACTOR)
        bucket.throttled(1.4)
        bucket.throttled(1.7)  # 0.6 s after the first event: a new one
        self.assertAlmostEqual(bucket.slowdown, SLOWDOWN_FACTOR ** 2)

    def test_refill_is_continuous_and_capped(self):
        bucket = Bucket("relay", tokens=0, refilled_at=10.0)
        bucket.refill(rate=4, burst=2, now=10.25)
        self.assertEqual(bucket.available(10.25), 1)
        bucket.refill(rate=4, burst=2, now=20.0)
        self.assertEqual(bucket.tokens, 2)
