"""
The per-client limit on LTI logins and launches ([lti] client_rate and
client_burst): the bucket itself, who counts as the client, and the 429
page over real HTTP for 1.3 logins and 1.1 launches alike.
"""

from __future__ import annotations

from twisted.internet import task
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from emaild.web import lti_limits
from emaild.web.lti_limits import ClientLimits, client_key
from tests.lti.test_lti import TRACEBACK_MARKERS, async_test
from tests.lti.test_lti13 import FORM, Lti13TestCase


class BucketTests(unittest.TestCase):
    def test_a_burst_then_the_rate(self):
        clock = task.Clock()
        limits = ClientLimits(rate=1.0, burst=3, clock=clock.seconds)
        self.assertEqual([limits.take("a") for _ in range(3)], [0.0, 0.0, 0.0])
        self.assertEqual(limits.take("a"), 1.0)
        self.assertEqual(limits.take("b"), 0.0)  # another client has its own bucket
        clock.advance(0.5)
        self.assertAlmostEqual(limits.take("a"), 0.5)
        clock.advance(0.5)
        self.assertEqual(limits.take("a"), 0.0)
        self.assertEqual(limits.take("a"), 1.0)

    def test_rate_zero_is_no_limit(self):
        limits = ClientLimits(rate=0.0, burst=1, clock=task.Clock().seconds)
        self.assertEqual({limits.take("a") for _ in range(1000)}, {0.0})

    def test_full_buckets_are_forgotten_when_there_are_many(self):
        self.patch(lti_limits, "MAX_TRACKED", 10)
        clock = task.Clock()
        limits = ClientLimits(rate=1.0, burst=2, clock=clock.seconds)
        for n in range(10):
            limits.take(f"c{n}")
        clock.advance(5)  # all full again
        limits.take("busy")
        limits.take("busy")
        self.assertEqual(len(limits._buckets), 1)
        self.assertEqual(limits.take("busy"), 1.0)  # what it still owes is remembered


class ClientKeyTests(unittest.TestCase):
    def request(self, peer: str, forwarded: str | None = None):
        request = DummyRequest([b""])
        request.client = type("Address", (), {"host": peer})()
        if forwarded is not None:
            request.requestHeaders.setRawHeaders(b"x-forwarded-for", [forwarded.encode()])
        return request

    def test_a_proxy_on_this_host_names_the_client(self):
        self.assertEqual(client_key(self.request("127.0.0.1", "198.51.100.1, 203.0.113.9")),
                         "203.0.113.9")
        self.assertEqual(client_key(self.request("::1", "203.0.113.9")), "203.0.113.9")
        self.assertEqual(client_key(self.request("127.0.0.1")), "127.0.0.1")

    def test_anyone_else_is_their_own_address_whatever_they_say(self):
        self.assertEqual(client_key(self.request("192.0.2.7", "203.0.113.9")), "192.0.2.7")


class LimitOverHttpTests(Lti13TestCase):
    @async_test
    async def test_too_many_logins_and_launches_get_a_429_page(self):
        from tests import oauth1
        from tests.lti.test_lti import launch_fields

        await self.start(lti={"client_rate": 0.01, "client_burst": 3,
                              "consumers": {"moodle": "moodle-shared-secret-1"}})
        here = {"X-Forwarded-For": ["203.0.113.9"]}
        browser = self.client()
        for _ in range(2):
            response, _ = await browser.get("/lti/login?" + self.login_query(), headers=here)
            self.assertEqual(response.code, 302)
        params = oauth1.sign("POST", self.base + "/lti/launch", launch_fields(), "moodle",
                             "moodle-shared-secret-1")
        response, body = await browser.post("/lti/launch", data=oauth1.form_body(params),
                                            headers={**FORM, **here})
        self.assertEqual(response.code, 303, body)  # the third: a 1.1 launch
        response, body = await browser.get("/lti/login?" + self.login_query(), headers=here)
        self.assertEqual(response.code, 429, body)
        self.assertIn("Too many launches from your network", body)
        (retry,) = response.headers.getRawHeaders("retry-after")
        self.assertGreaterEqual(int(retry), 1)
        for marker in TRACEBACK_MARKERS:
            self.assertNotIn(marker, body)
        params = oauth1.sign("POST", self.base + "/lti/launch",
                             launch_fields(user_id="u-2"), "moodle", "moodle-shared-secret-1")
        response, body = await browser.post("/lti/launch", data=oauth1.form_body(params),
                                            headers={**FORM, **here})
        self.assertEqual(response.code, 429, body)
        self.assertEqual(self.query("SELECT count(*) FROM lti_identities"), [(1,)])
        self.assertIn("LTI login refused (429): too many LTI requests from 127.0.0.1 "
                      "(forwarded for 203.0.113.9)", self.logged())
        self.assertEqual(self.logged().count("refused (429)"), 1)  # at most once a minute
        # another client is not held up
        response, _ = await browser.get("/lti/login?" + self.login_query(),
                                        headers={"X-Forwarded-For": ["198.51.100.4"]})
        self.assertEqual(response.code, 302)


class ConfigTests(unittest.TestCase):
    def test_the_limits_are_checked_and_named(self):
        from emaild.config import ConfigError, load_config

        self.assertEqual(load_config(None, overrides={"lti": {"client_rate": "0"}})
                         ["lti"]["client_rate"], 0.0)
        with self.assertRaises(ConfigError) as caught:
            load_config(None, overrides={"lti": {"client_burst": 0}})
        self.assertIn("lti.client_burst", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            load_config(None, overrides={"lti": {"client_rate": -1}})
        self.assertIn("lti.client_rate", str(caught.exception))
