"""
What every page shares: error pages instead of tracebacks, security
headers, static files.
"""

from twisted.internet import defer
from twisted.trial import unittest

from tests.webtest import WebTestCase


class PagesTests(WebTestCase):
    @defer.inlineCallbacks
    def test_unknown_page_is_a_404_page_with_security_headers(self):
        yield defer.ensureDeferred(self.start_web(web={"lms_origins": ["https://lms.example.org"]}))
        response, body = yield defer.ensureDeferred(self.client().get("/nope"))
        self.assertEqual(response.code, 404)
        self.assertIn("There is no such page.", body)
        self.assertNotIn("Traceback", body)
        headers = response.headers
        self.assertEqual(headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        self.assertEqual(headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        (csp,) = headers.getRawHeaders("content-security-policy")
        self.assertIn("frame-ancestors 'self' https://lms.example.org", csp)
        self.assertIn("default-src 'self'", csp)

    @defer.inlineCallbacks
    def test_wrong_method_is_a_405_page(self):
        yield defer.ensureDeferred(self.start_web())
        response, body = yield defer.ensureDeferred(self.client().post("/healthz"))
        self.assertEqual(response.code, 405)
        self.assertIn("does not accept", body)

    @defer.inlineCallbacks
    def test_static_files_and_no_path_escape(self):
        yield defer.ensureDeferred(self.start_web())
        browser = self.client()
        response, body = yield defer.ensureDeferred(browser.get("/static/site.css"))
        self.assertEqual(response.code, 200)
        self.assertIn("font-family", body)
        response, _ = yield defer.ensureDeferred(browser.get("/static/../../setup.cfg"))
        self.assertEqual(response.code, 404)


class AccessLogTests(unittest.TestCase):
    def test_link_tokens_never_reach_the_access_log(self):
        from twisted.web.test.requesthelper import DummyRequest

        from emaild.web.app import access_log_line

        request = DummyRequest([b"email", b"Ab3dE9xYz0Qw"])
        request.uri = b"/email/Ab3dE9xYz0Qw"
        request.code, request.sentLength = 303, 0
        request.requestHeaders.addRawHeader(b"referer", b"https://x.org/unsubscribe/Zz9Yy8Xx7Ww6")
        line = access_log_line("[28/Nov/2026:00:00:00 +0000]", request)
        self.assertIn("/email/<token>", line)
        self.assertIn("/unsubscribe/<token>", line)
        self.assertNotIn("Ab3dE9xYz0Qw", line)
        self.assertNotIn("Zz9Yy8Xx7Ww6", line)
