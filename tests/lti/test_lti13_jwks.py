"""
The JWKS cache's reading of HTTP cache headers and of JWKs.
"""

from __future__ import annotations

import email.utils

from twisted.trial import unittest
from twisted.web.http_headers import Headers

from emaild.people.lti13_jwks import DEFAULT_TTL, MAX_TTL, cache_lifetime, rsa_keys
from tests.lti13_platform import PlatformKey


class CacheLifetimeTests(unittest.TestCase):
    def lifetime(self, now=1_000_000.0, **headers):
        return cache_lifetime(Headers({k.replace("_", "-").encode(): [v.encode()]
                                       for k, v in headers.items()}), now)

    def test_cache_control(self):
        self.assertEqual(self.lifetime(cache_control="public, max-age=120"), 120)
        self.assertEqual(self.lifetime(cache_control="max-age=99999999"), MAX_TTL)
        self.assertEqual(self.lifetime(cache_control="no-cache"), 0)
        self.assertEqual(self.lifetime(cache_control="no-store, max-age=60"), 0)
        # max-age wins over Expires
        self.assertEqual(self.lifetime(cache_control="max-age=30",
                                       expires="Thu, 01 Jan 1970 00:00:00 GMT"), 30)

    def test_expires(self):
        now = 1_700_000_000.0
        later = email.utils.formatdate(now + 600, usegmt=True)
        self.assertEqual(self.lifetime(now, expires=later), 600)
        self.assertEqual(self.lifetime(now, expires="Thu, 01 Jan 1970 00:00:00 GMT"), 0)
        self.assertEqual(self.lifetime(now, expires="not a date"), 0)

    def test_nothing_said(self):
        self.assertEqual(self.lifetime(), DEFAULT_TTL)


class JwkTests(unittest.TestCase):
    def test_only_rsa_signature_keys_for_rs256_of_2048_bits_are_kept(self):
        good = PlatformKey("good").jwk()
        small = PlatformKey("small", bits=1024).jwk()
        keys = rsa_keys({"keys": [
            good, small,
            dict(good, kid="enc", use="enc"),
            dict(good, kid="rs512", alg="RS512"),
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            dict(good, kid="broken", n="not base64!"),
            "junk",
        ]})
        self.assertEqual(list(keys), ["good"])
