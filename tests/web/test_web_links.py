"""
Login links over real HTTP against a real database: mint, click, session,
rotation, expiry, "mail me a fresh link" with its rate limit, and every kind
of broken token (404, never a 500).
"""

from __future__ import annotations

import email
import functools
import re
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from twisted.internet import defer, reactor, task
from twisted.web._newclient import ResponseNeverReceived

from emaild.links.tokens import TokenParts
from emaild.web.routes_links import mask_address
from tests.support import wait_for
from tests.webtest import WebTestCase

TRACEBACK_MARKERS = ("Traceback", "File \"", "Error:", "twisted.", "psycopg2", "werkzeug")


def async_test(f):
    @functools.wraps(f)
    def wrapper(self):
        return defer.ensureDeferred(f(self))
    return wrapper


def set_cookie(response) -> str:
    (raw,) = response.headers.getRawHeaders("set-cookie")
    return raw


def cookie_value(raw: str) -> tuple[str, str]:
    cookie = SimpleCookie()
    cookie.load(raw)
    (name,) = cookie.keys()
    return name, cookie[name].value


def token_of(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[-1]


def text_of(body: bytes) -> str:
    """The text/plain part of a stored message, decoded."""
    message = email.message_from_bytes(bytes(body))
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
    raise AssertionError("no text/plain part")


class LinkTestCase(WebTestCase):
    def assert_no_traceback(self, body: str):
        for marker in TRACEBACK_MARKERS:
            self.assertNotIn(marker, body)

    def assert_email_headers(self, response):
        self.assertEqual(response.headers.getRawHeaders("referrer-policy"), ["no-referrer"])
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])

    async def person(self, email="ada@example.org", name="Ada Lovelace"):
        return await self.web.people.add(email, name)

    async def login_url(self, person, target="/home"):
        url = await self.web.links.login_url(person.id, target)
        self.assertTrue(url.startswith(self.base + "/email/"), url)
        return url

    def path(self, url: str) -> str:
        return urlsplit(url).path

    def expire_links(self, person):
        self.query("UPDATE links SET expires_at = now() - interval '1 second'"
                   " WHERE person_id = %s", (person.id,))


class LoginLinkTests(LinkTestCase):
    @async_test
    async def test_click_signs_in_and_redirects(self):
        await self.start_web()
        ada = await self.person()
        url = await self.login_url(ada)
        browser = self.client()

        response, body = await browser.get(self.path(url))
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders("location"), [self.base + "/home"])
        self.assert_email_headers(response)
        raw = set_cookie(response)
        attributes = [a.strip() for a in raw.split(";")]
        self.assertTrue(attributes[0].startswith("emaild_session="))
        self.assertIn("HttpOnly", attributes)
        self.assertIn("SameSite=Lax", attributes)
        self.assertIn("Path=/", attributes)
        self.assertNotIn("Secure", attributes)
        self.assertEqual(self.query("SELECT uses FROM links WHERE person_id = %s", (ada.id,)),
                         [(1,)])
        self.assertEqual(self.query("SELECT person_id FROM web_sessions WHERE revoked_at IS NULL"),
                         [(ada.id,)])

        response, body = await browser.get("/home")
        self.assertEqual(response.code, 200)
        self.assertIn("Ada Lovelace", body)

    @async_test
    async def test_https_public_url_cookie_is_secure_partitioned(self):
        # The socket is http, but the configured public URL is https (as
        # behind a TLS-terminating proxy): the cookie must be for https.
        await self.start_web(http={"public_url": "https://emaild.example.org"})
        ada = await self.person()
        url = await self.web.links.login_url(ada.id, "/home")
        self.assertTrue(url.startswith("https://emaild.example.org/email/"))
        response, _ = await self.client().get(self.path(url))
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders("location"),
                         ["https://emaild.example.org/home"])
        attributes = [a.strip() for a in set_cookie(response).split(";")]
        self.assertTrue(attributes[0].startswith("__Host-emaild_session="))
        for attribute in ("Secure", "SameSite=None", "Partitioned", "HttpOnly", "Path=/"):
            self.assertIn(attribute, attributes)
        self.assertNotIn("SameSite=Lax", attributes)
        self.assertFalse(any(a.lower().startswith("domain=") for a in attributes))

    @async_test
    async def test_redirect_to_allowed_origin(self):
        await self.start_web(web={"allowed_origins": ["https://lms.example.org"]})
        ada = await self.person()
        url = await self.login_url(ada, "https://lms.example.org/courses/7?tab=mail")
        response, _ = await self.client().get(self.path(url))
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders("location"),
                         ["https://lms.example.org/courses/7?tab=mail"])

    @async_test
    async def test_second_click_rotates_the_session(self):
        await self.start_web()
        ada = await self.person()
        browser = self.client()
        response, _ = await browser.get(self.path(await self.login_url(ada)))
        name, first = cookie_value(set_cookie(response))
        response, _ = await browser.get(self.path(await self.login_url(ada, "/home?again=1")))
        self.assertEqual(response.code, 303)
        name2, second = cookie_value(set_cookie(response))
        self.assertEqual(name, name2)
        self.assertNotEqual(first, second)
        # one live session; the first one is revoked
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions WHERE revoked_at IS NULL"),
                         [(1,)])
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions"), [(2,)])

        response, body = await browser.get("/home")
        self.assertEqual(response.code, 200)
        stranger = self.client()
        response, body = await stranger.get("/home", headers={"Cookie": f"{name}={first}"})
        self.assertEqual(response.code, 401)
        self.assertNotIn("Ada", body)
        response, body = await stranger.get("/home", headers={"Cookie": f"{name}={second}"})
        self.assertEqual(response.code, 200)
        self.assertIn("Ada Lovelace", body)

    @async_test
    async def test_a_link_for_someone_else_replaces_the_session(self):
        await self.start_web()
        ada, bob = await self.person(), await self.person("bob@example.org", "Bob Bobson")
        browser = self.client()
        await browser.get(self.path(await self.login_url(ada)))
        response, _ = await browser.get(self.path(await self.login_url(bob)))
        self.assertEqual(response.code, 303)
        response, body = await browser.get("/home")
        self.assertIn("Bob Bobson", body)
        self.assertNotIn("Ada", body)
        self.assertEqual(self.query("SELECT person_id FROM web_sessions WHERE revoked_at IS NULL"),
                         [(bob.id,)])

    @async_test
    async def test_idle_expiry(self):
        await self.start_web(web={"session_idle": "1h"})
        ada = await self.person()
        browser = self.client()
        await browser.get(self.path(await self.login_url(ada)))
        self.query("UPDATE web_sessions SET last_seen_at = now() - interval '59 minutes'")
        response, _ = await browser.get("/home")
        self.assertEqual(response.code, 200)
        # that visit was more than a minute after the last one: it was recorded
        (seen,) = self.query("SELECT now() - last_seen_at < interval '1 minute' FROM web_sessions")
        self.assertEqual(seen, (True,))
        self.query("UPDATE web_sessions SET last_seen_at = now() - interval '61 minutes'")
        response, body = await browser.get("/home")
        self.assertEqual(response.code, 401)
        self.assertIn("not signed in", body)

    @async_test
    async def test_absolute_expiry(self):
        await self.start_web()
        ada = await self.person()
        browser = self.client()
        await browser.get(self.path(await self.login_url(ada)))
        response, _ = await browser.get("/home")
        self.assertEqual(response.code, 200)
        self.query("UPDATE web_sessions SET expires_at = now() - interval '1 second'")
        response, _ = await browser.get("/home")
        self.assertEqual(response.code, 401)
        # a new click starts a new session
        response, _ = await browser.get(self.path(await self.login_url(ada)))
        self.assertEqual(response.code, 303)
        response, _ = await browser.get("/home")
        self.assertEqual(response.code, 200)

    @async_test
    async def test_head_does_not_sign_in(self):
        await self.start_web()
        ada = await self.person()
        url = await self.login_url(ada)
        response, body = await self.client().request("HEAD", self.path(url))
        self.assertEqual(response.code, 303)
        self.assertEqual(body, "")
        self.assertEqual(response.headers.getRawHeaders("location"), [self.base + "/home"])
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))
        self.assert_email_headers(response)
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions"), [(0,)])
        self.assertEqual(self.query("SELECT uses FROM links"), [(0,)])
        # HEAD of expired and unknown links: the GET statuses, no body
        response, _ = await self.client().request("HEAD", "/email/nosuchtoken123")
        self.assertEqual(response.code, 404)
        self.expire_links(ada)
        response, _ = await self.client().request("HEAD", self.path(url))
        self.assertEqual(response.code, 410)
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions"), [(0,)])

    @async_test
    async def test_prefetch_by_a_scanner_does_not_burn_the_link(self):
        await self.start_web()
        ada = await self.person()
        url = await self.login_url(ada)
        scanner, learner = self.client(), self.client()
        response, _ = await scanner.get(self.path(url))
        self.assertEqual(response.code, 303)
        response, _ = await learner.get(self.path(url))
        self.assertEqual(response.code, 303)
        response, body = await learner.get("/home")
        self.assertIn("Ada Lovelace", body)
        self.assertEqual(self.query("SELECT uses FROM links"), [(2,)])

    @async_test
    async def test_concurrent_clicks_are_all_counted(self):
        # each click counts its use and starts its session in one statement
        await self.start_web()
        people = [await self.person(f"p{i}@example.org", f"P {i}") for i in range(5)]
        urls = [await self.login_url(p) for p in people]
        clicks = [urls[i % 5] for i in range(23)]
        results = await defer.gatherResults([
            defer.ensureDeferred(self.client().get(self.path(url))) for url in clicks])
        self.assertEqual([r.code for r, _ in results], [303] * 23)
        self.assertEqual(self.query("SELECT uses FROM links ORDER BY id"),
                         [(5,), (5,), (5,), (4,), (4,)])
        self.assertEqual(self.query("SELECT count(*) FROM links WHERE last_used_at IS NULL"),
                         [(0,)])
        self.assertEqual(self.query("SELECT count(DISTINCT id) FROM web_sessions"), [(23,)])

    @async_test
    async def test_a_click_is_one_database_statement(self):
        # check the link, count the use, revoke the old session, start the
        # new one: one round trip and one commit
        await self.start_web()
        ada = await self.person()
        url = await self.login_url(ada)
        calls = []
        for name in ("runQuery", "runOperation", "run_prepared", "transaction"):
            original = getattr(self.db, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                calls.append(_name)
                return _original(*args, **kwargs)

            setattr(self.db, name, counted)
        browser = self.client()
        response, _ = await browser.get(self.path(url))
        self.assertEqual(response.code, 303)
        self.assertEqual(calls, ["run_prepared"])
        del calls[:]
        response, _ = await browser.get(self.path(url))  # with a session to revoke
        self.assertEqual(response.code, 303)
        self.assertEqual(calls, ["run_prepared"])
        self.assertEqual(self.query("SELECT uses FROM links"), [(2,)])
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions WHERE revoked_at IS NULL"),
                         [(1,)])

    @async_test
    async def test_a_refused_click_changes_nothing(self):
        # an expired or foreign link neither counts a use nor touches the
        # browser's current session
        await self.start_web()
        ada, bob = await self.person(), await self.person("bob@example.org", "Bob Bobson")
        browser = self.client()
        response, _ = await browser.get(self.path(await self.login_url(ada)))
        self.assertEqual(response.code, 303)
        bob_url = await self.login_url(bob)
        self.expire_links(bob)
        response, _ = await browser.get(self.path(bob_url))
        self.assertEqual(response.code, 410)
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))
        unsubscribe = token_of(await self.web.links.mint(bob.id, "unsubscribe", "all"))
        response, _ = await browser.get(f"/email/{unsubscribe}")
        self.assertEqual(response.code, 404)
        self.assertEqual(self.query("SELECT uses FROM links WHERE person_id = %s ORDER BY id",
                                    (bob.id,)), [(0,), (0,)])
        self.assertEqual(self.query("SELECT person_id FROM web_sessions WHERE revoked_at IS NULL"),
                         [(ada.id,)])
        response, body = await browser.get("/home")
        self.assertEqual(response.code, 200)
        self.assertIn("Ada Lovelace", body)

    @async_test
    async def test_client_going_away_does_not_cancel_the_sign_in(self):
        # Klein cancels the route when the connection is lost; a query in
        # flight must not be cancelled (txpostgres raises from its canceller)
        await self.start_web()
        ada = await self.person()
        url = await self.login_url(ada)
        entered, gate = defer.Deferred(), defer.Deferred(canceller=self.fail_cancel)
        use = self.web.links.store.use_many

        async def slow_use(*args):
            entered.callback(None)
            await gate
            return await use(*args)

        self.web.links.store.use_many = slow_use
        request = defer.ensureDeferred(self.client().get(self.path(url)))
        request.addErrback(lambda f: f.trap(defer.CancelledError, ResponseNeverReceived))
        await entered
        request.cancel()  # the client drops the connection
        await request
        await task.deferLater(reactor, 0.1, lambda: None)
        gate.callback(None)
        await wait_for(lambda: self.query("SELECT count(*) FROM web_sessions") == [(1,)])
        await wait_for(lambda: self.query("SELECT uses FROM links") == [(1,)])

    @staticmethod
    def fail_cancel(d):
        raise RuntimeError("cancelled a query in flight (as txpostgres does)")

    @async_test
    async def test_database_outage_is_a_503_page(self):
        await self.start_web()
        ada = await self.person()
        url = await self.login_url(ada)
        self.db.close()
        response, body = await self.client().get(self.path(url))
        self.assertEqual(response.code, 503)
        self.assert_email_headers(response)
        self.assert_no_traceback(body)


class TamperedTokenTests(LinkTestCase):
    @async_test
    async def test_tampered_tokens_are_404_never_500(self):
        await self.start_web()
        ada = await self.person()
        bob = await self.person("bob@example.org", "Bob")
        url = await self.login_url(ada)
        token = token_of(url)
        bob_link = await self.web.links.store.get(
            self.web.links.codec.decode(token_of(await self.login_url(bob))).link_id)
        ada_link = await self.web.links.store.get(self.web.links.codec.decode(token).link_id)
        unsubscribe = token_of(await self.web.links.mint(ada.id, "unsubscribe", "all"))
        codec = self.web.links.codec
        flipped = token[:5] + ("a" if token[5] != "a" else "b") + token[6:]
        bad = {
            "one character changed": flipped,
            "upper-cased": token.upper() if token.upper() != token else token.lower(),
            "truncated by one": token[:-1],
            "truncated by half": token[: len(token) // 2],
            "one character extra": token + "x",
            "doubled": token + token,
            "garbage": "hello-world",
            "very long": "a" * 5000,
            "non-ASCII": "%C3%A9t%C3%A9" + token[4:],
            "non-ASCII digits": "%D9%A3" * 12,
            "NUL byte": token[:4] + "%00" + token[4:],
            "encoded slash": token[:4] + "%2F" + token[4:],
            "dot segments": "..%2F..%2Fetc%2Fpasswd",
            "query string only": token[:6] + "?x=" + token[6:],
            "unsubscribe token": unsubscribe,
            "another row's id with this secret": codec.encode(
                TokenParts(bob_link.id, ada_link.secret_hi, ada_link.secret_lo)),
            "this row with a wrong secret": codec.encode(
                TokenParts(ada_link.id, ada_link.secret_hi, ada_link.secret_lo ^ 1)),
            "a row that does not exist": codec.encode(TokenParts(ada_link.id + 1000, 1, 2)),
            "a number beyond bigint": codec.encode(TokenParts(2 ** 70, 1, 2)),
            "zero": codec.encode(TokenParts(0, 0, 0)),
        }
        browser = self.client()
        for what, bad_token in bad.items():
            for method, path in [("GET", f"/email/{bad_token}"),
                                 ("POST", f"/email/{bad_token}/fresh")]:
                response, body = await browser.request(
                    method, path, data={"token": bad_token} if method == "POST" else None)
                # ("?x=" makes POST /email/<prefix>?x=...: a wrong method there)
                expected = 405 if (what, method) == ("query string only", "POST") else 404
                self.assertEqual(response.code, expected, f"{what}: {method} {path}")
                self.assert_email_headers(response)
                self.assert_no_traceback(body)
                self.assertIsNone(response.headers.getRawHeaders("set-cookie"), what)
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions"), [(0,)])
        self.assertEqual(self.query("SELECT sum(uses) FROM links"), [(0,)])
        self.assertEqual(self.query("SELECT count(*) FROM outbox"), [(0,)])
        # and the real token still works
        response, _ = await browser.get(f"/email/{token}")
        self.assertEqual(response.code, 303)

    @async_test
    async def test_every_email_path_says_no_referrer(self):
        await self.start_web()
        ada = await self.person()
        token = token_of(await self.login_url(ada))
        browser = self.client()
        for method, path, code in [
            ("GET", "/email/", 404),
            ("GET", "/email/a/b/c", 404),
            ("GET", f"/email/{token}/", 404),
            ("GET", f"/email/{token}/fresh", 405),
            ("GET", f"/email/{token}/other", 404),
            ("POST", f"/email/{token}/other", 404),
            ("PUT", f"/email/{token}", 405),
            ("DELETE", f"/email/{token}", 405),
            ("POST", f"/email/{token}", 405),
            ("OPTIONS", f"/email/{token}", 405),
        ]:
            response, body = await browser.request(method, path)
            self.assertEqual(response.code, code, f"{method} {path}")
            self.assert_email_headers(response)
            self.assert_no_traceback(body)
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions"), [(0,)])


class FreshLinkTests(LinkTestCase):
    async def expired_page(self, browser, url):
        response, body = await browser.get(self.path(url))
        self.assertEqual(response.code, 410)
        self.assert_email_headers(response)
        self.assert_no_traceback(body)
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))
        return body

    def outbox_rows(self):
        return self.query("SELECT recipient, template, qos, body FROM outbox ORDER BY id")

    @async_test
    async def test_expired_link_offers_a_fresh_one_that_works(self):
        await self.start_web(web={"fresh_link_limit": 2, "fresh_link_window": "1h"})
        ada = await self.person("ada.lovelace@example.org")
        url = await self.login_url(ada, "/home?from=mail")
        self.expire_links(ada)
        browser = self.client()
        body = await self.expired_page(browser, url)
        token = token_of(url)
        self.assertIn(f'action="/email/{token}/fresh"', body)
        self.assertIn(f'name="token" value="{token}"', body)
        self.assertNotIn("ada.lovelace", body)
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions"), [(0,)])

        # the browser posts its own form: the page was no-referrer, so Origin is null
        response, body = await browser.post(f"/email/{token}/fresh", data={"token": token},
                                            headers={"Origin": "null",
                                                     "Sec-Fetch-Site": "same-origin"})
        self.assertEqual(response.code, 200, body)
        self.assert_email_headers(response)
        self.assertIn("a***@example.org", body)
        self.assertNotIn("ada.lovelace", body)
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))

        (row,) = self.outbox_rows()
        recipient, template, qos, raw = row
        self.assertEqual((recipient, template, qos),
                         ("ada.lovelace@example.org", "login", "transactional"))
        message = email.message_from_bytes(bytes(raw))
        self.assertIn("sign-in link", message["Subject"])
        self.assertIn("ada.lovelace@example.org", message["To"])
        text = text_of(raw)
        self.assertIn("Hello Ada Lovelace", text)
        links = re.findall(re.escape(self.base) + r"/email/[A-Za-z0-9]+", text)
        self.assertEqual(len(set(links)), 1, text)
        (fresh,) = set(links)
        self.assertNotEqual(fresh, url)
        # the HTML part carries the same link
        html = [p for p in message.walk() if p.get_content_type() == "text/html"]
        self.assertEqual(len(html), 1)
        self.assertIn(fresh, html[0].get_payload(decode=True).decode("utf-8"))

        response, _ = await browser.get(self.path(fresh))
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders("location"),
                         [self.base + "/home?from=mail"])
        response, body = await browser.get("/home")
        self.assertEqual(response.code, 200)
        self.assertIn("Ada Lovelace", body)

        # a second request is allowed (limit 2), the third is refused
        response, _ = await browser.post(f"/email/{token}/fresh", data={"token": token})
        self.assertEqual(response.code, 200)
        response, body = await browser.post(f"/email/{token}/fresh", data={"token": token})
        self.assertEqual(response.code, 429)
        self.assert_email_headers(response)
        self.assert_no_traceback(body)
        self.assertIn("try again in about 60 minutes", body)
        retry = int(response.headers.getRawHeaders("retry-after")[0])
        self.assertTrue(3500 <= retry <= 3600, retry)
        self.assertEqual(len(self.outbox_rows()), 2)
        self.assertEqual(self.query("SELECT count(*) FROM fresh_link_requests"), [(2,)])

        # once the window has passed, one more is allowed
        self.query("UPDATE fresh_link_requests SET requested_at = now() - interval '61 minutes'")
        response, _ = await browser.post(f"/email/{token}/fresh", data={"token": token})
        self.assertEqual(response.code, 200)
        self.assertEqual(len(self.outbox_rows()), 3)
        self.assertEqual(self.query("SELECT count(*) FROM fresh_link_requests"), [(1,)])

    @async_test
    async def test_rate_limit_is_per_person_and_holds_under_concurrency(self):
        await self.start_web(web={"fresh_link_limit": 3})
        ada = await self.person()
        bob = await self.person("bob@example.org", "Bob")
        ada_token = token_of(await self.login_url(ada))
        bob_token = token_of(await self.login_url(bob))
        self.expire_links(ada)
        self.expire_links(bob)
        browser = self.client()
        results = await defer.gatherResults([
            defer.ensureDeferred(self.client().post(f"/email/{ada_token}/fresh",
                                                    data={"token": ada_token}))
            for _ in range(8)])
        codes = sorted(r.code for r, _ in results)
        self.assertEqual(codes, [200] * 3 + [429] * 5)
        response, _ = await browser.post(f"/email/{bob_token}/fresh", data={"token": bob_token})
        self.assertEqual(response.code, 200)
        self.assertEqual(self.query("SELECT recipient, count(*) FROM outbox GROUP BY 1 ORDER BY 1"),
                         [("ada@example.org", 3), ("bob@example.org", 1)])

    @async_test
    async def test_fresh_link_goes_to_the_current_address(self):
        await self.start_web()
        ada = await self.person("old@example.org")
        url = await self.login_url(ada)
        self.expire_links(ada)
        self.query("UPDATE people SET email = 'new@example.net' WHERE id = %s", (ada.id,))
        token = token_of(url)
        response, body = await self.client().post(f"/email/{token}/fresh", data={"token": token})
        self.assertEqual(response.code, 200)
        self.assertIn("n***@example.net", body)
        self.assertEqual([r[0] for r in self.outbox_rows()], ["new@example.net"])

    @async_test
    async def test_person_without_an_address(self):
        await self.start_web()
        nomail = await self.web.people.add(None, "No Mail")
        url = await self.login_url(nomail)
        self.expire_links(nomail)
        token = token_of(url)
        browser = self.client()
        await self.expired_page(browser, url)
        response, body = await browser.post(f"/email/{token}/fresh", data={"token": token})
        self.assertEqual(response.code, 200)
        self.assertIn("no email address", body)
        self.assert_email_headers(response)
        self.assertEqual(self.outbox_rows(), [])
        self.assertEqual(self.query("SELECT count(*) FROM fresh_link_requests"), [(0,)])

    @async_test
    async def test_person_with_an_unusable_address(self):
        await self.start_web()
        odd = await self.web.people.add("not an address", "Odd")
        url = await self.login_url(odd)
        self.expire_links(odd)
        token = token_of(url)
        response, body = await self.client().post(f"/email/{token}/fresh", data={"token": token})
        self.assertEqual(response.code, 200)
        self.assertIn("cannot receive mail", body)
        self.assertNotIn("not an address", body)
        self.assert_no_traceback(body)
        self.assertEqual(self.outbox_rows(), [])
        # and it did not use up one of their requests
        self.assertEqual(self.query("SELECT count(*) FROM fresh_link_requests"), [(0,)])

    @async_test
    async def test_fresh_link_form_checks(self):
        await self.start_web()
        ada = await self.person()
        url = await self.login_url(ada)
        token = token_of(url)
        browser = self.client()
        # still valid: the form just leads to the link
        response, _ = await browser.post(f"/email/{token}/fresh", data={"token": token})
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders("location"), [f"/email/{token}"])
        self.expire_links(ada)
        for what, data, headers, code in [
            ("no token field", None, {}, 400),
            ("another token in the field", {"token": token[:-1]}, {}, 400),
            ("cross-site origin", {"token": token}, {"Origin": "https://evil.example"}, 403),
            ("cross-site fetch", {"token": token}, {"Sec-Fetch-Site": "cross-site"}, 403),
            ("same-site fetch", {"token": token}, {"Sec-Fetch-Site": "same-site"}, 403),
        ]:
            response, body = await browser.post(f"/email/{token}/fresh", data=data,
                                                headers=headers)
            self.assertEqual(response.code, code, what)
            self.assert_email_headers(response)
            self.assert_no_traceback(body)
        self.assertEqual(self.outbox_rows(), [])
        response, _ = await browser.post(f"/email/{token}/fresh", data={"token": token},
                                         headers={"Origin": self.base})
        self.assertEqual(response.code, 200)
        self.assertEqual(len(self.outbox_rows()), 1)

    @async_test
    async def test_expired_target_no_longer_allowed_falls_back_to_home(self):
        await self.start_web(web={"allowed_origins": ["https://lms.example.org"]})
        ada = await self.person()
        url = await self.login_url(ada, "https://lms.example.org/c/1")
        self.expire_links(ada)
        # the operator removed the origin: the fresh link lands on /home
        self.web.links.allowed_origins = ()
        token = token_of(url)
        response, _ = await self.client().post(f"/email/{token}/fresh", data={"token": token})
        self.assertEqual(response.code, 200)
        (row,) = self.outbox_rows()
        fresh = re.search(r"/email/[A-Za-z0-9]+", text_of(row[3])).group(0)
        response, _ = await self.client().get(fresh)
        self.assertEqual(response.headers.getRawHeaders("location"), [self.base + "/home"])

    def test_mask_address(self):
        self.assertEqual(mask_address("ada@example.org"), "a***@example.org")
        self.assertEqual(mask_address("a@example.org"), "a***@example.org")
        self.assertEqual(mask_address("weird"), "***")


class MintingTests(LinkTestCase):
    @async_test
    async def test_minting_reuses_valid_links(self):
        await self.start_web()
        ada = await self.person()
        first = await self.web.links.login_url(ada.id, "/home")
        second = await self.web.links.login_url(ada.id, "/home")
        self.assertEqual(first, second)
        self.assertEqual(self.query("SELECT count(*) FROM links"), [(1,)])

        people = [await self.web.people.add(f"learner{i}@example.org", f"Learner {i}")
                  for i in range(50)]
        links = self.web.links
        before = self.query("SELECT count(*) FROM links")[0][0]
        rows = await links.mint_many([links.request(p.id, "login", "/home") for p in people])
        again = await links.mint_many([links.request(p.id, "login", "/home") for p in people])
        self.assertEqual(self.query("SELECT count(*) FROM links")[0][0], before + 50)
        self.assertEqual([links.url(r) for r in rows], [links.url(r) for r in again])
        self.assertEqual(len({links.url(r) for r in rows}), 50)
