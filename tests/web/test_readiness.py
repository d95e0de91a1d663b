"""
While the daemon starts (the database not yet open and migrated), every route
that needs the database answers 503 with Retry-After in its own language
(HTML page, or JSON under /api/ and at /metrics), /healthz says "starting",
and the SMTP server answers 421 4.3.2; once ready, they answer as usual.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from emaild.inbound.server import InboundFactory
from emaild.readiness import Readiness
from tests.webtest import WebTestCase

TOKEN = "t" * 40


class StartingWebTests(WebTestCase):
    async def starting(self):
        await self.start_web(ready=False, api={"tokens": [TOKEN]})
        return self.client()

    @defer.inlineCallbacks
    def test_routes_answer_503_with_retry_after_in_their_own_language(self):
        browser = yield defer.ensureDeferred(self.starting())
        auth = {"Authorization": [f"Bearer {TOKEN}"]}
        cases = [("GET", "/api/v1/queue", {"headers": auth}, "application/json"),
                 ("POST", "/api/v1/people", {"headers": auth, "json": {}}, "application/json"),
                 ("GET", "/api/v1", {}, "application/json"),
                 ("GET", "/metrics", {}, "application/json"),
                 ("GET", "/email/abcdefgh", {}, "text/html"),
                 ("POST", "/lti/launch", {"data": {"a": "b"}}, "text/html"),
                 ("GET", "/unsubscribe/abcdefgh", {}, "text/html"),
                 ("GET", "/home", {}, "text/html"),
                 ("GET", "/no/such/page", {}, "text/html")]
        for method, path, kwargs, media in cases:
            response, body = yield defer.ensureDeferred(browser.request(method, path, **kwargs))
            self.assertEqual(response.code, 503, (path, body))
            self.assertEqual(response.headers.getRawHeaders("Retry-After"), ["5"], path)
            self.assertTrue(response.headers.getRawHeaders("Content-Type")[0].startswith(media),
                            path)
            self.assertIn("starting", body, path)
            self.assertNotIn("Traceback", body)
        # the security headers are still there
        self.assertTrue(response.headers.getRawHeaders("Content-Security-Policy"))

    @defer.inlineCallbacks
    def test_healthz_says_starting_then_ok(self):
        browser = yield defer.ensureDeferred(self.starting())
        response, body = yield defer.ensureDeferred(browser.get("/healthz"))
        self.assertEqual(response.code, 503)
        self.assertIn('"status": "starting"', body)
        self.hs.get_readiness().mark_ready()
        response, body = yield defer.ensureDeferred(browser.get("/healthz"))
        self.assertEqual(response.code, 200)
        self.assertIn('"status": "ok"', body)
        response, _ = yield defer.ensureDeferred(browser.get(
            "/api/v1/queue", headers={"Authorization": [f"Bearer {TOKEN}"]}))
        self.assertEqual(response.code, 200)
        response, _ = yield defer.ensureDeferred(browser.get("/email/abcdefgh"))
        self.assertEqual(response.code, 404)

    @defer.inlineCallbacks
    def test_static_files_are_served_while_starting(self):
        browser = yield defer.ensureDeferred(self.starting())
        response, body = yield defer.ensureDeferred(browser.get("/static/site.css"))
        self.assertEqual(response.code, 200)

    @defer.inlineCallbacks
    def test_stopping_is_503_too(self):
        browser = yield defer.ensureDeferred(self.starting())
        self.hs.get_readiness().mark_ready()
        self.hs.get_readiness().mark_stopping()
        response, body = yield defer.ensureDeferred(browser.get("/email/abcdefgh"))
        self.assertEqual(response.code, 503)
        self.assertIn("stopping", body)
        response, body = yield defer.ensureDeferred(browser.get("/healthz"))
        self.assertEqual(response.code, 503)
        self.assertIn('"status": "stopping"', body)


class StartingSMTPTests(TestCase):
    def connect(self, readiness):
        factory = InboundFactory(handler=None, hostname="mx.test", is_ready=readiness.is_ready)
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 4321))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return factory, protocol, transport

    def test_421_until_ready_then_220(self):
        readiness = Readiness()
        factory, protocol, transport = self.connect(readiness)
        self.assertEqual(transport.value(),
                         b"421 4.3.2 Service not yet ready, try again later\r\n")
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"EHLO client\r\nMAIL FROM:<a@example.org>\r\n")  # ignored
        self.assertEqual(transport.value(),
                         b"421 4.3.2 Service not yet ready, try again later\r\n")
        protocol.connectionLost(None)
        self.assertEqual(factory.sessions, set())
        readiness.mark_ready()
        _, protocol, transport = self.connect(readiness)
        self.assertEqual(transport.value(), b"220 mx.test ESMTP\r\n")
        protocol.connectionLost(None)
