"""
LTI 1.3 launches over real HTTP against a real database and the platform
emulator of L{tests.lti13_platform} (its own keys and hand-built JWTs).
"""

from __future__ import annotations

import html
import json
import time
import urllib.parse

from twisted.internet import reactor, task
from twisted.logger import formatEvent, globalLogPublisher

from tests.lti.test_lti import TRACEBACK_MARKERS, async_test, cookie_of
from tests.lti13_platform import (
    CLAIM,
    CLIENT_ID,
    DEPLOYMENT_ID,
    INSTRUCTOR,
    ISSUER,
    LEARNER,
    Platform,
    hs256_jwt,
    rs256_jwt,
    unsigned_jwt,
)
from tests.webtest import WebTestCase

FORM = {"Content-Type": ["application/x-www-form-urlencoded"]}


class Lti13TestCase(WebTestCase):
    async def start(self, platform_changes=None, **sections):
        self.platform = Platform()
        await self.platform.start()
        self.addCleanup(self.platform.stop)
        lti = sections.pop("lti", {})
        await self.start_web(
            lti13={"platforms": {"emulator": self.platform.platform_config(
                **(platform_changes or {}))}},
            lti=lti, **sections)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.platform.tool_jwks = self.web.lti13.keys.jwks

    def logged(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)

    def login_query(self, **changes) -> str:
        params = {"iss": ISSUER, "login_hint": "hint-7", "target_link_uri": self.base + "/lti/launch",
                  "lti_message_hint": "msg-hint", "client_id": CLIENT_ID,
                  "lti_deployment_id": DEPLOYMENT_ID}
        params.update(changes)
        return urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})

    async def login(self, browser, **changes) -> dict:
        """
        /lti/login; returns the parameters of the redirect to the platform.
        """
        response, body = await browser.get("/lti/login?" + self.login_query(**changes))
        self.assertEqual(response.code, 302, body)
        (location,) = response.headers.getRawHeaders("location")
        self.assertTrue(location.startswith(self.platform.url("/auth?")), location)
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))

    async def post_launch(self, browser, id_token, state):
        return await browser.post("/lti/launch", data=urllib.parse.urlencode(
            {"id_token": id_token, "state": state}).encode(), headers=FORM)

    async def launch(self, browser=None, **changes):
        """
        Log in, then post an id_token the emulator made for the login's nonce.
        """
        browser = browser or self.client()
        redirect = await self.login(browser)
        token = self.platform.id_token(redirect["nonce"], **changes)
        return await self.post_launch(browser, token, redirect["state"])

    def assert_launched(self, response, body):
        self.assertEqual(response.code, 303, body)
        self.assertEqual(response.headers.getRawHeaders("location"), [self.base + "/home"])

    def assert_refused(self, response, body, status, *fragments):
        self.assertEqual(response.code, status, body)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/html; charset=utf-8"])
        for fragment in fragments:
            self.assertIn(fragment, html.unescape(body))
        for marker in TRACEBACK_MARKERS:
            self.assertNotIn(marker, body)
        cookies = response.headers.getRawHeaders("set-cookie") or []
        self.assertFalse([c for c in cookies if "session" in c], cookies)
        self.assertIn("LTI 1.3 launch refused", self.logged())

    def people(self):
        return self.query("SELECT id, email, display_name FROM people ORDER BY id")


class JwksEndpointTests(Lti13TestCase):
    @async_test
    async def test_jwks_publishes_the_tool_key_as_rs256_signature_key(self):
        await self.start()
        response, body = await self.client().get("/lti/jwks.json")
        self.assertEqual(response.code, 200)
        jwks = json.loads(body)
        (key,) = jwks["keys"]
        self.assertEqual((key["kty"], key["alg"], key["use"]), ("RSA", "RS256", "sig"))
        self.assertEqual(set(key), {"kty", "kid", "alg", "use", "n", "e"})
        (pem,) = (self.tmp / "lti" / "keys").glob("*.pem")
        self.assertEqual(pem.stem, key["kid"])
        self.assertEqual(pem.stat().st_mode & 0o777, 0o600)
        self.assertGreaterEqual(self.web.lti13.keys.signing_key()[1].key_size, 2048)

    @async_test
    async def test_rotation_publishes_both_until_the_old_one_is_retired(self):
        await self.start()
        keys = self.web.lti13.keys
        first = keys.ensure()
        second = keys.rotate()
        self.assertEqual(keys.signing_key()[0], second)
        response, body = await self.client().get("/lti/jwks.json")
        self.assertEqual([k["kid"] for k in json.loads(body)["keys"]], [second, first])
        from emaild.people.lti13_keys import ToolKeyError

        self.assertRaises(ToolKeyError, keys.retire, second)
        keys.retire(first)
        _, body = await self.client().get("/lti/jwks.json")
        self.assertEqual([k["kid"] for k in json.loads(body)["keys"]], [second])


class LoginTests(Lti13TestCase):
    @async_test
    async def test_login_redirects_to_the_platform_with_a_stored_single_use_state(self):
        await self.start()
        browser = self.client()
        redirect = await self.login(browser)
        self.assertEqual(
            {k: redirect[k] for k in ("scope", "response_type", "response_mode", "prompt",
                                      "client_id", "redirect_uri", "login_hint",
                                      "lti_message_hint")},
            {"scope": "openid", "response_type": "id_token", "response_mode": "form_post",
             "prompt": "none", "client_id": CLIENT_ID, "redirect_uri": self.base + "/lti/launch",
             "login_hint": "hint-7", "lti_message_hint": "msg-hint"})
        self.assertGreaterEqual(len(redirect["state"]), 40)
        self.assertGreaterEqual(len(redirect["nonce"]), 40)
        self.assertNotEqual(redirect["state"], redirect["nonce"])
        (row,) = self.query("SELECT state_hash, nonce, platform, used_at,"
                            " expires_at - created_at FROM lti13_login_states")
        self.assertNotEqual(row[0], redirect["state"])  # stored hashed
        self.assertEqual(row[1:4], (redirect["nonce"], "emulator", None))
        self.assertEqual(row[4].total_seconds(), 600)

    @async_test
    async def test_login_by_post_works_too(self):
        await self.start()
        response, body = await self.client().post(
            "/lti/login", data=self.login_query().encode(), headers=FORM)
        self.assertEqual(response.code, 302, body)

    @async_test
    async def test_bad_logins_are_refused_with_the_reason(self):
        await self.start()
        cases = [
            ({"iss": "https://other.example"}, "Unknown platform"),
            ({"iss": None}, "missing the required parameter iss"),
            ({"login_hint": None}, "missing the required parameter login_hint"),
            ({"target_link_uri": "https://evil.example/lti/launch"}, "is not on this site"),
            ({"target_link_uri": self.base + ".evil.example/x"}, "is not on this site"),
            ({"client_id": "someone-else"}, "Unknown client_id"),
            ({"lti_deployment_id": "deployment-9"}, "Unknown deployment"),
            ({"lti_storage_target": "bad frame<name>"}, "is not a frame name"),
        ]
        for changes, fragment in cases:
            response, body = await self.client().get("/lti/login?" + self.login_query(**changes))
            self.assertEqual(response.code, 400, (changes, body))
            self.assertIn(fragment, body)
            self.assertIsNone(response.headers.getRawHeaders("location"))
        self.assertEqual(self.query("SELECT count(*) FROM lti13_login_states"), [(0,)])


class LaunchTests(Lti13TestCase):
    @async_test
    async def test_the_whole_oidc_flow_signs_the_learner_in(self):
        await self.start()
        self.platform.custom = {"group": "Team 4"}
        self.platform.roles = [
            LEARNER, "http://purl.imsglobal.org/vocab/lis/v2/membership/Instructor#TeachingAssistant"]
        browser = self.client()
        response, body = await browser.get("/lti/login?" + self.login_query())
        self.assertEqual(response.code, 302)
        (location,) = response.headers.getRawHeaders("location")
        # the platform's authorization endpoint answers with its form_post
        response, page = await browser.get(location)
        self.assertEqual(response.code, 200, page)
        import re

        action = re.search(r'action="([^"]+)"', page).group(1)
        fields = dict(re.findall(r'name="([^"]+)" value="([^"]+)"', page))
        self.assertEqual(action, self.base + "/lti/launch")
        response, body = await self.post_launch(browser, fields["id_token"], fields["state"])
        self.assert_launched(response, body)
        ((person_id, email, name),) = self.people()
        self.assertEqual((email, name), ("grace@example.org", "Grace Hopper"))
        self.assertEqual(self.query("SELECT issuer, sub, person_id FROM lti13_identities"),
                         [(ISSUER, "lti13-user-7", person_id)])
        self.assertEqual(self.query(
            "SELECT c.consumer_key, c.context_id, c.title, m.roles FROM course_members m"
            " JOIN courses c ON c.id = m.course_id"),
            [("lti13:emulator", "ctx-physics", "Physics 101", self.platform.roles)])
        self.assertEqual(self.query("SELECT g.name FROM group_members m JOIN groups g"
                                    " ON g.id = m.group_id"), [("Team 4",)])
        response, home = await browser.get("/home")
        self.assertEqual(response.code, 200)
        self.assertIn("Grace Hopper", home)
        self.assertIn("Physics 101", home)
        self.assertIn(f"LTI 1.3 launch: person {person_id} (new)", self.logged())

    @async_test
    async def test_a_second_launch_updates_the_same_person_and_instructor_roles_count(self):
        await self.start()
        self.assert_launched(*await self.launch())
        self.platform.user = dict(self.platform.user, name="Grace B. Hopper")
        self.platform.roles = [INSTRUCTOR]
        self.assert_launched(*await self.launch())
        ((person_id, _, name),) = self.people()
        self.assertEqual(name, "Grace B. Hopper")
        from emaild.people.store import PeopleStore

        (course_id,) = self.query("SELECT id FROM courses")[0]
        self.assertTrue(await PeopleStore(self.db).is_staff(course_id, person_id))

    @async_test
    async def test_a_launch_with_a_known_address_links_the_person_who_has_it(self):
        await self.start()
        ada = await self.web.people.add("grace@example.org", "Grace (imported)")
        self.assert_launched(*await self.launch())
        self.assertEqual([p[0] for p in self.people()], [ada.id])
        self.assertEqual(self.query("SELECT person_id FROM lti13_identities"), [(ada.id,)])

    @async_test
    async def test_launch_with_several_audiences_needs_azp(self):
        await self.start()
        self.assert_refused(*await self.launch(aud=[CLIENT_ID, "other"]), 401, "no azp")
        self.assert_launched(*await self.launch(aud=[CLIENT_ID, "other"], azp=CLIENT_ID))

    @async_test
    async def test_platform_key_rotation_refetches_the_jwks_once(self):
        await self.start()
        self.assert_launched(*await self.launch())
        self.assertEqual(self.platform.jwks_requests, 1)
        self.assert_launched(*await self.launch())
        self.assertEqual(self.platform.jwks_requests, 1)  # cached (max-age=300)
        self.web.lti13.jwks.refetch_interval = 1.0
        await task.deferLater(reactor, 1.1, lambda: None)
        self.platform.rotate()
        self.assert_launched(*await self.launch())  # signed with the new kid
        self.assertEqual(self.platform.jwks_requests, 2)
        # a made-up kid right after: refused, and no new fetch (rate limit)
        self.assert_refused(*await self.launch(header={"kid": "made-up"}), 401,
                            "no RS256 signing key with kid")
        self.assertEqual(self.platform.jwks_requests, 2)

    @async_test
    async def test_no_store_jwks_is_fetched_for_every_launch(self):
        await self.start()
        self.platform.jwks_cache_control = "no-store"
        self.assert_launched(*await self.launch())
        self.assert_launched(*await self.launch())
        self.assertEqual(self.platform.jwks_requests, 2)


class RefusalTests(Lti13TestCase):
    async def refused(self, status, fragment, token_for, browser=None):
        browser = browser or self.client()
        redirect = await self.login(browser)
        response, body = await self.post_launch(browser, token_for(redirect["nonce"]),
                                                redirect["state"])
        self.assert_refused(response, body, status, fragment)
        token = token_for(redirect["nonce"])
        if token.count(".") == 2:  # the token (its payload) is never logged
            self.assertNotIn(token.split(".")[1][:40], self.logged())
        return body

    @async_test
    async def test_every_bad_token_is_refused_naming_why(self):
        await self.start()
        p = self.platform
        now = int(time.time())
        other_key = type(p.keys[0])("platform-key-1")  # same kid, another key
        cases = [
            ("Bad id_token signature", lambda n: p.id_token(n, key=other_key), 401),
            ("Wrong issuer", lambda n: p.id_token(n, iss="https://evil.example"), 401),
            ("Wrong audience", lambda n: p.id_token(n, aud="another-tool"), 401),
            ("has expired", lambda n: p.id_token(n, exp=now - 120, iat=now - 600), 401),
            ("issued in the future", lambda n: p.id_token(n, iat=now + 600), 401),
            ("nonce is not the one", lambda n: p.id_token("another-nonce"), 401),
            ("Unknown deployment", lambda n: p.id_token(n, **{CLAIM + "deployment_id": "d-9"}),
             401),
            ("missing the required claim sub", lambda n: p.id_token(n, sub=None), 400),
            ("resource_link", lambda n: p.id_token(n, **{CLAIM + "resource_link": None}), 400),
            ("claim/roles", lambda n: p.id_token(n, **{CLAIM + "roles": None}), 400),
            ("Unsupported message_type",
             lambda n: p.id_token(n, **{CLAIM + "message_type": "LtiDeepLinkingRequest"}), 400),
            ("Unsupported LTI version", lambda n: p.id_token(n, **{CLAIM + "version": "1.2"}),
             400),
            ("no RS256 signing key with kid", lambda n: p.id_token(n, header={"kid": "nope"}),
             401),
            ("names no key", lambda n: p.id_token(n, header={"kid": None}), 401),
            ("not a signed JWT", lambda n: "not-a-jwt", 400),
            ("signed with 'none'", lambda n: unsigned_jwt(p.claims(n)), 401),
            # HMAC key confusion: HS256 "signed" with the platform's public key
            ("signed with 'HS256'", lambda n: hs256_jwt(
                {"alg": "HS256", "typ": "JWT", "kid": p.keys[0].kid}, p.claims(n),
                p.keys[0].public_pem()), 401),
            ("contains a NUL", lambda n: p.id_token(n, name="Grace\u0000Hopper"), 400),
            ("contains a NUL", lambda n: p.id_token(n, **{CLAIM + "roles": ["Learner\u0000"]}),
             400),
            ("not a user id", lambda n: p.id_token(n, sub="x" * 256), 400),
            ("not valid", lambda n: p.id_token(n, exp="tomorrow"), 400),
            ("not base64url-encoded JSON", lambda n: "e30x!." + p.id_token(n).split(".", 1)[1],
             400),
            ("signed with 'RS512'", lambda n: rs256_jwt(
                {"alg": "RS512", "kid": p.keys[0].kid}, p.claims(n), p.keys[0].private), 401),
        ]
        for fragment, token_for, status in cases:
            await self.refused(status, fragment, token_for)

    @async_test
    async def test_state_must_exist_be_unused_and_fresh(self):
        await self.start()
        browser = self.client()
        redirect = await self.login(browser)
        token = self.platform.id_token(redirect["nonce"])
        self.assert_launched(*await self.post_launch(browser, token, redirect["state"]))
        # the same post again (a replay): the state is used up
        response, body = await self.post_launch(browser, token, redirect["state"])
        self.assertEqual(response.code, 401)
        self.assertIn("already used", body)
        # a state we never made
        response, body = await self.post_launch(browser, token, "made-up-state")
        self.assertEqual(response.code, 401)
        self.assertIn("state is unknown", body)
        # no state at all
        response, body = await browser.post("/lti/launch", data=urllib.parse.urlencode(
            {"id_token": token}).encode(), headers=FORM)
        self.assertEqual(response.code, 400)
        self.assertIn("no state", body)
        # an expired one
        redirect = await self.login(browser)
        self.query("UPDATE lti13_login_states SET expires_at = now() - interval '1 s'"
                   " WHERE used_at IS NULL")
        response, body = await self.post_launch(
            browser, self.platform.id_token(redirect["nonce"]), redirect["state"])
        self.assertEqual(response.code, 401)
        self.assertIn("has expired", body)

    @async_test
    async def test_a_replayed_nonce_is_refused_even_with_a_fresh_state(self):
        await self.start()
        browser = self.client()
        redirect = await self.login(browser)
        self.assert_launched(*await self.post_launch(
            browser, self.platform.id_token(redirect["nonce"]), redirect["state"]))
        # a second login whose state row is made to carry the first nonce
        second = await self.login(browser)
        self.query("UPDATE lti13_login_states SET nonce = %s WHERE used_at IS NULL",
                   (redirect["nonce"],))
        response, body = await self.post_launch(
            browser, self.platform.id_token(redirect["nonce"]), second["state"])
        self.assert_refused(response, body, 401, "nonce was used before")

    @async_test
    async def test_a_launch_from_another_browser_is_refused(self):
        await self.start()
        redirect = await self.login(self.client())
        token = self.platform.id_token(redirect["nonce"])
        response, body = await self.post_launch(self.client(), token, redirect["state"])
        self.assert_refused(response, body, 401, "did not begin this login")

    @async_test
    async def test_unreachable_jwks_is_a_clear_refusal(self):
        await self.start(platform_changes={"key_set_url": "http://127.0.0.1:9/jwks"})
        response, body = await self.launch()
        self.assert_refused(response, body, 401, "could not be fetched")

    @async_test
    async def test_a_jwks_error_status_is_a_clear_refusal(self):
        await self.start()
        self.platform.jwks_status = 503
        response, body = await self.launch()
        self.assert_refused(response, body, 401, "answered HTTP 503")

    @async_test
    async def test_lti11_launches_still_work_beside(self):
        from tests import oauth1
        from tests.lti.test_lti import launch_fields

        await self.start(lti={"consumers": {"moodle": "moodle-shared-secret-1"}})
        params = oauth1.sign("POST", self.base + "/lti/launch", launch_fields(), "moodle",
                             "moodle-shared-secret-1")
        response, body = await self.client().post("/lti/launch", data=oauth1.form_body(params),
                                                  headers=FORM)
        self.assertEqual(response.code, 303, body)
        self.assertEqual(self.query("SELECT consumer_key, user_id FROM lti_identities"),
                         [("moodle", "u-1001")])


class PlatformErrorTests(Lti13TestCase):
    @async_test
    async def test_the_platforms_error_response_is_shown(self):
        await self.start()
        browser = self.client()
        redirect = await self.login(browser)
        response, body = await browser.post("/lti/launch", data=urllib.parse.urlencode(
            {"error": "login_required", "error_description": "Please sign in to Moodle",
             "state": redirect["state"]}).encode(), headers=FORM)
        self.assert_refused(response, body, 400, "did not sign you in: 'login_required' "
                                                 "(Please sign in to Moodle)")


class SeveralRegistrationsTests(Lti13TestCase):
    @async_test
    async def test_one_issuer_two_client_ids(self):
        self.platform = Platform()
        await self.platform.start()
        self.addCleanup(self.platform.stop)
        await self.start_web(lti13={"platforms": {
            "first": self.platform.platform_config(),
            "second": self.platform.platform_config(client_id="second-client")}})
        response, body = await self.client().get("/lti/login?" + self.login_query(client_id=None))
        self.assertEqual(response.code, 400)
        self.assertIn("must name its client_id", body)
        response, _ = await self.client().get("/lti/login?" + self.login_query(
            client_id="second-client"))
        self.assertEqual(response.code, 302)
        (location,) = response.headers.getRawHeaders("location")
        self.assertIn("client_id=second-client", location)
        self.assertEqual(self.query("SELECT platform FROM lti13_login_states"), [("second",)])


class StateCookieTests(Lti13TestCase):
    @async_test
    async def test_state_cookie_over_https_is_partitioned_and_cross_site(self):
        await self.start(http={"public_url": "https://mail.course.example"})
        response, body = await self.client().get("/lti/login?" + self.login_query(
            target_link_uri="https://mail.course.example/lti/launch"))
        self.assertEqual(response.code, 302, body)
        name, _, raw = cookie_of(response)
        self.assertTrue(name.startswith("emaild_lti_state_"))
        for attribute in ("Secure", "HttpOnly", "SameSite=None", "Partitioned", "Path=/lti/",
                          "Max-Age=600"):
            self.assertIn(attribute, raw)


class DatabaseCalls:
    """
    Counts what goes to the database through C{db} while it is installed:
    transactions, the statements run inside them, and statements outside.
    """

    def __init__(self, test, db):
        self.transactions = self.in_transactions = self.outside = 0
        for name in ("transaction", "runQuery", "runOperation"):
            original = getattr(db, name)
            setattr(db, name, getattr(self, "_" + name)(original))
            test.addCleanup(delattr, db, name)

    def _transaction(self, original):
        def transaction(fn, *args, **kwargs):
            self.transactions += 1

            async def counted(cursor, *a, **kw):
                execute = cursor.execute

                def counting_execute(*e, **ekw):
                    self.in_transactions += 1
                    return execute(*e, **ekw)

                cursor.execute = counting_execute
                try:
                    return await fn(cursor, *a, **kw)
                finally:
                    cursor.execute = execute

            return original(counted, *args, **kwargs)
        return transaction

    def _runQuery(self, original):  # noqa: N802
        def run(*args, **kwargs):
            self.outside += 1
            return original(*args, **kwargs)
        return run

    _runOperation = _runQuery  # noqa: N815


class OneTransactionTests(Lti13TestCase):
    """
    A launch whose browser has the state cookie is one transaction: the
    state used up, the nonce recorded, the person, course and session, all
    committed together (or, refused, nothing written).
    """

    @async_test
    async def test_a_launch_is_one_transaction_and_no_other_statement(self):
        await self.start()
        browser = self.client()
        redirect = await self.login(browser)
        token = self.platform.id_token(redirect["nonce"])
        calls = DatabaseCalls(self, self.web.db)
        self.assert_launched(*await self.post_launch(browser, token, redirect["state"]))
        self.assertEqual((calls.transactions, calls.outside), (1, 0))
        # state + nonce + lock, identity, person, identity row, course, membership, session
        self.assertLessEqual(calls.in_transactions, 7)
        self.assertEqual(self.query("SELECT used_at IS NOT NULL FROM lti13_login_states"),
                         [(True,)])
        self.assertEqual(self.query("SELECT nonce FROM lti13_nonces"), [(redirect["nonce"],)])
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions"), [(1,)])
        response, _ = await browser.get("/home")
        self.assertEqual(response.code, 200)

    @async_test
    async def test_a_refused_launch_writes_nothing(self):
        await self.start()
        browser = self.client()
        redirect = await self.login(browser)
        # a token from another login (its nonce): refused inside the transaction
        response, body = await self.post_launch(
            browser, self.platform.id_token("another-nonce"), redirect["state"])
        self.assert_refused(response, body, 401, "nonce is not the one")
        self.assertEqual(self.query("SELECT used_at FROM lti13_login_states"), [(None,)])
        self.assertEqual(self.query("SELECT count(*) FROM lti13_nonces"), [(0,)])
        self.assertEqual(self.people(), [])
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions"), [(0,)])

    @async_test
    async def test_two_posts_of_one_launch_at_once_sign_in_once(self):
        await self.start()
        browser = self.client()
        redirect = await self.login(browser)
        token = self.platform.id_token(redirect["nonce"])
        # the second post comes from the same browser (its state cookie) at the same moment
        cookie = [c for c in browser.cookies if c.name.startswith("emaild_lti_state_")][0]
        value = f"{cookie.name}={cookie.value}"
        other = self.client()
        posts = [browser.post("/lti/launch", data=urllib.parse.urlencode(
                     {"id_token": token, "state": redirect["state"]}).encode(), headers=FORM),
                 other.post("/lti/launch", data=urllib.parse.urlencode(
                     {"id_token": token, "state": redirect["state"]}).encode(),
                     headers={**FORM, "Cookie": [value]})]
        from twisted.internet import defer

        results = await defer.gatherResults([defer.ensureDeferred(p) for p in posts])
        codes = sorted(response.code for response, _ in results)
        self.assertEqual(codes, [303, 401], [body[:300] for _, body in results])
        refused = [body for response, body in results if response.code == 401][0]
        self.assertIn("already used", refused)
        self.assertEqual(len(self.people()), 1)
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions"), [(1,)])

    @async_test
    async def test_a_token_of_another_registration_cannot_use_the_login(self):
        self.platform = Platform()
        await self.platform.start()
        self.addCleanup(self.platform.stop)
        await self.start_web(lti13={"platforms": {
            "first": self.platform.platform_config(),
            "second": self.platform.platform_config(client_id="second-client")}})
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        browser = self.client()
        redirect = await self.login(browser, client_id="second-client")
        # signed by the platform for the first registration, carrying this login's nonce
        token = self.platform.id_token(redirect["nonce"])
        response, body = await self.post_launch(browser, token, redirect["state"])
        self.assert_refused(response, body, 401, "made for a login with another platform")
        self.assertEqual(self.query("SELECT used_at FROM lti13_login_states"), [(None,)])
        # the same token with the second registration's audience is accepted
        token = self.platform.id_token(redirect["nonce"], aud="second-client")
        self.assert_launched(*await self.post_launch(browser, token, redirect["state"]))


class LoginFastPathTests(Lti13TestCase):
    @async_test
    async def test_the_login_is_served_without_klein_and_answers_the_same(self):
        await self.start()
        klein = self.web.klein
        executed = []
        original = klein.execute_endpoint

        def counting(endpoint, *args, **kwargs):
            executed.append(endpoint)
            return original(endpoint, *args, **kwargs)

        klein.execute_endpoint = counting
        self.addCleanup(delattr, klein, "execute_endpoint")
        browser = self.client()
        redirect = await self.login(browser)  # GET: a 302 and the state cookie
        self.assertTrue([c for c in browser.cookies if c.name.startswith("emaild_lti_state_")])
        response, body = await browser.post("/lti/login", data=self.login_query().encode(),
                                            headers=FORM)
        self.assertEqual(response.code, 302, body)
        response, body = await browser.get("/lti/login?" + self.login_query(iss=None))
        self.assertEqual(response.code, 400)
        self.assertIn("missing the required parameter iss", body)
        for header in ("content-security-policy", "x-content-type-options"):
            self.assertTrue(response.headers.getRawHeaders(header), header)
        self.assertEqual(executed, [])
        # the launch goes to Klein, and so does what is not a GET or POST of the login
        token = self.platform.id_token(redirect["nonce"])
        self.assert_launched(*await self.post_launch(browser, token, redirect["state"]))
        self.assertEqual(len(executed), 1)
        response, _ = await browser.request("PUT", "/lti/login")
        self.assertEqual(response.code, 405)  # Klein's method check
        response, _ = await browser.get("/lti/login/x")
        self.assertEqual(response.code, 404)

    @async_test
    async def test_an_unexpected_error_in_the_login_is_a_500_page(self):
        await self.start()

        async def broken(params):
            raise RuntimeError("boom")

        self.web.lti13.login = broken
        response, body = await self.client().get("/lti/login?" + self.login_query())
        self.assertEqual(response.code, 500)
        self.assertIn("Something went wrong on our side", body)
        for marker in TRACEBACK_MARKERS:
            self.assertNotIn(marker, body)
        self.flushLoggedErrors(RuntimeError)
