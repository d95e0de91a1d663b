"""
LTI 1.1 launches over real HTTP against a real database, signed by our own
RFC 5849 signer (L{tests.oauth1}), not by the library that verifies them.
"""

from __future__ import annotations

import functools
import hashlib
import time

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from tests import oauth1
from tests.webtest import WebTestCase

KEY, SECRET = "moodle", "moodle-shared-secret-1"
KEY2, SECRET2 = "edx-prod", "edx-shared-secret-22"
CONSUMERS = {KEY: SECRET, KEY2: SECRET2}
FORM = {"Content-Type": ["application/x-www-form-urlencoded"]}
TRACEBACK_MARKERS = ("Traceback", "File \"", "twisted.", "psycopg2", "oauthlib")


def async_test(f):
    @functools.wraps(f)
    def wrapper(self):
        return defer.ensureDeferred(f(self))
    return wrapper


def launch_fields(**changes) -> dict:
    """
    A typical Moodle launch; C{changes} override fields, None removes one.
    """
    fields = {
        "lti_message_type": "basic-lti-launch-request",
        "lti_version": "LTI-1p0",
        "resource_link_id": "rl-42",
        "resource_link_title": "Course mail",
        "user_id": "u-1001",
        "roles": "Learner",
        "lis_person_name_full": "Ada Lovelace",
        "lis_person_name_given": "Ada",
        "lis_person_name_family": "Lovelace",
        "lis_person_contact_email_primary": "ada@example.org",
        "context_id": "course-v1:Logic+2026",
        "context_title": "Logic 101",
        "launch_presentation_return_url": "https://lms.example.org/course/view.php?id=3",
        "tool_consumer_info_product_family_code": "moodle",
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


def cookie_of(response) -> tuple[str, str, str]:
    """
    (name, value, the whole Set-Cookie header) of the response's one cookie.
    """
    (raw,) = response.headers.getRawHeaders("set-cookie")
    # (SimpleCookie gives up on the Partitioned attribute)
    name, value = raw.split(";", 1)[0].split("=", 1)
    return name.strip(), value.strip(), raw


class SignerTests(unittest.TestCase):
    """
    The test signer against the RFC's own examples.
    """

    def test_rfc5849_section_3_4_1_1_base_string(self):
        params = [("oauth_consumer_key", "9djdj82h48djs9d2"), ("oauth_token", "kkk9d7dh3k39sjv7"),
                  ("oauth_signature_method", "HMAC-SHA1"), ("oauth_timestamp", "137131201"),
                  ("oauth_nonce", "7d8f3e4a"), ("realm", "Example"), ("c2", ""), ("a3", "2 q")]
        self.assertEqual(
            oauth1.base_string("post", "http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b",
                               params),
            "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q%26a3%3Da%26b5"
            "%3D%253D%25253D%26c%2540%3D%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26"
            "oauth_nonce%3D7d8f3e4a%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D"
            "137131201%26oauth_token%3Dkkk9d7dh3k39sjv7")

    def test_rfc5849_section_1_2_signature(self):
        params = [("oauth_consumer_key", "dpf43f3p2l4k3l03"), ("oauth_token", "nnch734d00sl2jdk"),
                  ("oauth_signature_method", "HMAC-SHA1"), ("oauth_timestamp", "137131202"),
                  ("oauth_nonce", "chapoH")]
        base = oauth1.base_string(
            "GET", "http://photos.example.net:80/photos?file=vacation.jpg&size=original", params)
        self.assertEqual(oauth1.hmac_sha1(base, "kd94hf93k423kf44", "pfkkdhi9sl3r4s00"),
                         "MdpQcU8iPSUjWoN/UDMsK2sui9I=")

    def test_percent_encoding(self):
        self.assertEqual(oauth1.percent_encode("Zoë ~a+b/c*"), "Zo%C3%AB%20~a%2Bb%2Fc%2A")


class LtiTestCase(WebTestCase):
    async def start(self, public_url: str | None = None, **lti):
        http = {"public_url": public_url} if public_url else {}
        await self.start_web(lti={"consumers": CONSUMERS, **lti}, http=http)
        self.launch_url = self.cfg["http"]["public_url"] + "/lti/launch"
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def signed(self, fields: dict, key=KEY, secret=SECRET, url=None, **kwargs):
        return oauth1.sign("POST", url or self.launch_url, fields, key, secret, **kwargs)

    async def post(self, params, browser=None, path="/lti/launch", headers=FORM):
        body = oauth1.form_body(params) if isinstance(params, list) else params
        return await (browser or self.client()).post(path, data=body, headers=headers)

    async def launch(self, browser=None, key=KEY, secret=SECRET, url=None, **changes):
        return await self.post(self.signed(launch_fields(**changes), key, secret, url), browser)

    def assert_launched(self, response, body):
        self.assertEqual(response.code, 303, body)
        self.assertEqual(response.headers.getRawHeaders("location"),
                         [self.cfg["http"]["public_url"] + "/home"])
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])

    def assert_refused(self, response, body, status, *fragments):
        self.assertEqual(response.code, status, body)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/html; charset=utf-8"])
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))
        for fragment in fragments:
            self.assertIn(fragment, body)
        for marker in TRACEBACK_MARKERS:
            self.assertNotIn(marker, body)

    def logged(self) -> str:
        return "\n".join(formatEvent(e) for e in self.events)

    def people(self):
        return self.query("SELECT id, email, display_name FROM people ORDER BY id")

    def identities(self):
        return self.query("SELECT consumer_key, user_id, person_id FROM lti_identities"
                          " ORDER BY person_id, consumer_key, user_id")

    def memberships(self):
        return self.query(
            "SELECT c.consumer_key, c.context_id, c.title, m.person_id, m.roles,"
            " m.last_launch_at IS NOT NULL"
            " FROM course_members m JOIN courses c ON c.id = m.course_id ORDER BY c.id, m.person_id")

    def groups(self):
        return self.query(
            "SELECT c.context_id, g.name, m.person_id, m.left_at IS NULL"
            " FROM group_members m JOIN groups g ON g.id = m.group_id"
            " JOIN courses c ON c.id = g.course_id ORDER BY g.id, m.person_id")


class LaunchTests(LtiTestCase):
    @async_test
    async def test_launch_creates_the_person_course_group_and_session(self):
        await self.start()
        response, body = await self.launch(custom_group="Team 4",
                                           roles="Learner,urn:lti:role:ims/lis/TeachingAssistant")
        self.assert_launched(response, body)
        ((person_id, email, name),) = self.people()
        self.assertEqual((email, name), ("ada@example.org", "Ada Lovelace"))
        self.assertEqual(self.identities(), [(KEY, "u-1001", person_id)])
        self.assertEqual(self.memberships(), [
            (KEY, "course-v1:Logic+2026", "Logic 101", person_id,
             ["Learner", "urn:lti:role:ims/lis/TeachingAssistant"], True)])
        self.assertEqual(self.groups(), [("course-v1:Logic+2026", "Team 4", person_id, True)])

        name, value, raw = cookie_of(response)
        self.assertEqual(name, "emaild_session")  # plain http: no __Host- prefix
        self.assertIn("HttpOnly", raw)
        self.assertIn("SameSite=Lax", raw)
        sessions = self.query("SELECT id, person_id FROM web_sessions WHERE revoked_at IS NULL")
        self.assertEqual(sessions, [(hashlib.sha256(value.encode()).hexdigest(), person_id)])
        session = await self.web.sessions.store.find(value, time.time(), 3600)
        self.assertEqual(session.session.person_id, person_id)
        self.assertIn(f"LTI launch: person {person_id} (new)", self.logged())

    @async_test
    async def test_a_second_launch_updates_the_same_person(self):
        await self.start()
        browser = self.client()
        self.assert_launched(*await self.launch(browser, custom_group="Team 4"))
        (first_session,) = self.query("SELECT id FROM web_sessions")
        self.assert_launched(*await self.launch(
            browser, lis_person_name_full="Augusta Ada King", context_title="Logic 101 (2026)",
            lis_person_contact_email_primary="ada.king@example.org", roles="Instructor",
            custom_group="Team 5"))
        ((person_id, email, name),) = self.people()
        self.assertEqual((email, name), ("ada.king@example.org", "Augusta Ada King"))
        self.assertEqual(self.identities(), [(KEY, "u-1001", person_id)])
        self.assertEqual(self.memberships(), [
            (KEY, "course-v1:Logic+2026", "Logic 101 (2026)", person_id, ["Instructor"], True)])
        # a launch adds groups; it does not take the person out of others
        self.assertEqual(self.groups(), [("course-v1:Logic+2026", "Team 4", person_id, True),
                                         ("course-v1:Logic+2026", "Team 5", person_id, True)])
        # the browser's previous session was replaced, not kept beside the new one
        live = self.query("SELECT id FROM web_sessions WHERE revoked_at IS NULL")
        self.assertEqual(len(live), 1)
        self.assertNotEqual(live[0][0], first_session[0])

    @async_test
    async def test_a_launch_without_name_or_address_keeps_what_we_have(self):
        await self.start()
        self.assert_launched(*await self.launch())
        self.assert_launched(*await self.launch(lis_person_name_full=None, lis_person_name_given=None,
                                                lis_person_name_family=None,
                                                lis_person_contact_email_primary=None))
        self.assertEqual([p[1:] for p in self.people()], [("ada@example.org", "Ada Lovelace")])

    @async_test
    async def test_given_and_family_names_and_no_address(self):
        # edX sends no address unless the course is configured to share it
        await self.start()
        self.assert_launched(*await self.launch(lis_person_name_full=None,
                                                lis_person_name_given="Grace",
                                                lis_person_name_family="Hopper",
                                                lis_person_contact_email_primary=None))
        self.assertEqual([p[1:] for p in self.people()], [(None, "Grace Hopper")])

    @async_test
    async def test_an_unusable_address_is_ignored_and_logged(self):
        await self.start()
        self.assert_launched(*await self.launch(lis_person_contact_email_primary="not an address"))
        self.assertEqual([p[1:] for p in self.people()], [(None, "Ada Lovelace")])
        self.assertIn("ignoring the address 'not an address'", self.logged())

    @async_test
    async def test_non_ascii_names_and_an_upper_case_address(self):
        await self.start()
        hand_made = await self.web.people.add("zoe.angstrom@example.org", "")
        name = "Zoë Ångström-Łukasiewicz 渡辺"
        response, body = await self.launch(user_id="ü-7", lis_person_name_full=name,
                                           lis_person_contact_email_primary="Zoe.Angstrom@Example.ORG",
                                           context_title="Lógica ∀x", custom_group="Équipe 3")
        self.assert_launched(response, body)
        # the LMS vouches for the address: the identity joins the person who has it
        self.assertEqual(self.people(), [(hand_made.id, "Zoe.Angstrom@Example.ORG", name)])
        self.assertEqual(self.identities(), [(KEY, "ü-7", hand_made.id)])
        self.assertEqual(self.memberships()[0][2], "Lógica ∀x")
        self.assertEqual(self.groups(), [("course-v1:Logic+2026", "Équipe 3", hand_made.id, True)])
        self.assertIn("(linked by address)", self.logged())
        self.assertEqual((await self.web.people.by_email("ZOE.ANGSTROM@example.org")).display_name,
                         name)

    @async_test
    async def test_an_address_taken_by_someone_else_is_not_moved(self):
        await self.start()
        other = await self.web.people.add("grace@example.org", "Grace Hopper")
        self.assert_launched(*await self.launch())
        self.assert_launched(*await self.launch(lis_person_contact_email_primary="GRACE@example.org"))
        self.assertEqual([p[1:] for p in self.people()], [
            ("grace@example.org", "Grace Hopper"), ("ada@example.org", "Ada Lovelace")])
        ada = self.people()[1][0]
        self.assertIn(f"person {ada} keeps their address: 'GRACE@example.org' belongs to "
                      f"person {other.id}", self.logged())

    @async_test
    async def test_several_consumer_keys(self):
        await self.start()
        self.assert_launched(*await self.launch(key=KEY, secret=SECRET))
        # the same user_id at another consumer is another user
        self.assert_launched(*await self.launch(
            key=KEY2, secret=SECRET2, lis_person_contact_email_primary="ada@edx.example.org"))
        # and another consumer's user with a known address is that person
        self.assert_launched(*await self.launch(key=KEY2, secret=SECRET2, user_id="edx-77"))
        ada, ada_edx = [p[0] for p in self.people()]
        self.assertEqual(self.identities(), [(KEY2, "edx-77", ada), (KEY, "u-1001", ada),
                                             (KEY2, "u-1001", ada_edx)])
        # each consumer's course is its own, even with the same context_id
        self.assertEqual([(m[0], m[1], m[3]) for m in self.memberships()], [
            (KEY, "course-v1:Logic+2026", ada),
            (KEY2, "course-v1:Logic+2026", ada), (KEY2, "course-v1:Logic+2026", ada_edx)])

    @async_test
    async def test_group_membership_is_reactivated(self):
        await self.start()
        self.assert_launched(*await self.launch(custom_group="Team 4"))
        self.query("UPDATE group_members SET left_at = now()")
        self.assertEqual(self.groups()[0][3], False)
        self.assert_launched(*await self.launch(custom_group="  Team   4 "))
        self.assertEqual(self.groups(), [("course-v1:Logic+2026", "Team 4", self.people()[0][0], True)])

    @async_test
    async def test_the_group_parameter_is_configurable(self):
        await self.start(group_parameter="custom_cohort")
        self.assert_launched(*await self.launch(custom_group="Ignored", custom_cohort="Night owls"))
        self.assertEqual([g[1] for g in self.groups()], ["Night owls"])

    @async_test
    async def test_a_launch_without_a_course(self):
        await self.start()
        self.assert_launched(*await self.launch(context_id=None, context_title=None,
                                                custom_group="Team 4"))
        self.assertEqual(len(self.people()), 1)
        self.assertEqual(self.memberships(), [])
        self.assertEqual(self.groups(), [])
        self.assertIn("names group 'Team 4' but no context_id", self.logged())

    @async_test
    async def test_concurrent_first_launches_make_one_person(self):
        await self.start()
        results = await defer.gatherResults([
            defer.ensureDeferred(self.launch(lis_person_contact_email_primary=None))
            for _ in range(4)])
        for response, body in results:
            self.assert_launched(response, body)
        self.assertEqual(len(self.people()), 1)
        self.assertEqual(len(self.identities()), 1)

    @async_test
    async def test_a_query_string_in_the_launch_url_is_signed_too(self):
        await self.start()
        fields = launch_fields()
        params = self.signed(fields, url=self.launch_url + "?tool=mail&x=%C3%A9")
        response, body = await self.post(params, path="/lti/launch?tool=mail&x=%C3%A9")
        self.assert_launched(response, body)
        params = self.signed(launch_fields(), url=self.launch_url + "?tool=mail")
        response, body = await self.post(params, path="/lti/launch?tool=other")
        self.assert_refused(response, body, 401, "Bad OAuth signature")


class ProxyTests(LtiTestCase):
    @async_test
    async def test_the_launch_url_comes_from_public_url(self):
        await self.start(public_url="https://courses.example.org/mail")
        self.assertEqual(self.launch_url, "https://courses.example.org/mail/lti/launch")
        response, body = await self.launch()
        self.assertEqual(response.code, 303, body)
        self.assertEqual(response.headers.getRawHeaders("location"),
                         ["https://courses.example.org/mail/home"])
        name, _, raw = cookie_of(response)
        self.assertEqual(name, "__Host-emaild_session")
        for attribute in ("Secure", "HttpOnly", "SameSite=None", "Partitioned", "Path=/"):
            self.assertIn(attribute, raw.split("; "))

        # the URL the request really arrived at is not what the LMS signed
        response, body = await self.launch(url=self.base + "/lti/launch")
        self.assert_refused(response, body, 401, "Bad OAuth signature",
                            "https://courses.example.org/mail/lti/launch")
        # nor is the public host over http, or another path
        response, body = await self.launch(url="http://courses.example.org/mail/lti/launch")
        self.assert_refused(response, body, 401, "Bad OAuth signature")
        response, body = await self.launch(url="https://courses.example.org/lti/launch")
        self.assert_refused(response, body, 401, "Bad OAuth signature")
        # an explicit default port and upper-case host are the same URL (RFC 5849 3.4.1.2)
        response, body = await self.launch(url="https://Courses.Example.org:443/mail/lti/launch")
        self.assertEqual(response.code, 303, body)


class RefusalTests(LtiTestCase):
    def assert_nothing_created(self):
        self.assertEqual(self.people(), [])
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions"), [(0,)])

    def assert_logged(self, *fragments):
        text = self.logged()
        self.assertIn("LTI launch refused", text)
        for fragment in fragments:
            self.assertIn(fragment, text)
        for secret in CONSUMERS.values():
            self.assertNotIn(secret, text)

    @async_test
    async def test_unknown_consumer_key(self):
        await self.start()
        response, body = await self.launch(key="canvas-test", secret="whatever-secret-123")
        self.assert_refused(response, body, 401, "Unknown consumer key",
                            "&#39;canvas-test&#39;")
        self.assert_nothing_created()
        self.assert_logged("(401)", "Unknown consumer key", "consumer key 'canvas-test'")
        self.assertEqual(self.query("SELECT count(*) FROM lti_nonces"), [(0,)])

    @async_test
    async def test_wrong_secret(self):
        await self.start()
        response, body = await self.launch(secret=SECRET2)
        self.assert_refused(response, body, 401, "Bad OAuth signature", "&#39;moodle&#39;")
        self.assert_nothing_created()
        self.assert_logged("Bad OAuth signature", "consumer key 'moodle'")
        # a forged request does not use up the nonce it carries
        self.assertEqual(self.query("SELECT count(*) FROM lti_nonces"), [(0,)])

    @async_test
    async def test_tampered_parameter(self):
        await self.start()
        for name, value in (("user_id", "u-1"), ("roles", "Instructor"),
                            ("custom_group", "Team 1"), ("oauth_timestamp", None)):
            params = self.signed(launch_fields())
            if name == "oauth_timestamp":
                value = str(int(dict(params)["oauth_timestamp"]) - 1)
            params = ([(k, value if k == name else v) for k, v in params]
                      if name in dict(params) else params + [(name, value)])
            response, body = await self.post(params)
            self.assert_refused(response, body, 401, "Bad OAuth signature")
        self.assert_nothing_created()

    @async_test
    async def test_stale_or_future_timestamp(self):
        await self.start()
        now = int(time.time())
        for skew, word in ((-360, "old"), (360, "in the future")):
            params = self.signed(launch_fields(), timestamp=now + skew)
            response, body = await self.post(params)
            self.assert_refused(response, body, 401, "timestamp", word, "300")
        self.assert_nothing_created()
        self.assert_logged("timestamp")
        # within the window is fine
        response, body = await self.post(self.signed(launch_fields(), timestamp=now - 240))
        self.assert_launched(response, body)

    @async_test
    async def test_replayed_nonce(self):
        await self.start()
        params = self.signed(launch_fields(), nonce="n-0123456789")
        self.assert_launched(*await self.post(params))
        response, body = await self.post(params)
        self.assert_refused(response, body, 401, "already used", "nonce")
        self.assert_logged("replayed", "consumer key 'moodle'")
        # re-signed with the same nonce, still a replay
        response, body = await self.post(self.signed(launch_fields(), nonce="n-0123456789"))
        self.assert_refused(response, body, 401, "nonce")
        # nonces are per consumer
        response, body = await self.post(self.signed(launch_fields(), KEY2, SECRET2,
                                                     nonce="n-0123456789"))
        self.assert_launched(response, body)

    @async_test
    async def test_old_nonces_are_deleted(self):
        await self.start()
        self.query("INSERT INTO lti_nonces (consumer_key, nonce, seen_at) VALUES"
                   " ('moodle', 'ancient', now() - interval '11 minutes'),"
                   " ('moodle', 'recent', now() - interval '9 minutes')")
        self.assert_launched(*await self.launch())
        nonces = sorted(n for (n,) in self.query("SELECT nonce FROM lti_nonces"))
        self.assertEqual(len(nonces), 2)
        self.assertIn("recent", nonces)
        self.assertNotIn("ancient", nonces)

    @async_test
    async def test_missing_required_parameters(self):
        await self.start()
        for name in ("user_id", "resource_link_id", "lti_version", "lti_message_type"):
            response, body = await self.launch(**{name: None})
            self.assert_refused(response, body, 400, "missing", name)
        response, body = await self.launch(user_id="  ")
        self.assert_refused(response, body, 400, "user_id")
        for name in ("oauth_nonce", "oauth_signature", "oauth_consumer_key", "oauth_timestamp"):
            params = [(k, v) for k, v in self.signed(launch_fields()) if k != name]
            response, body = await self.post(params)
            self.assert_refused(response, body, 400, "missing", name)
        self.assert_nothing_created()
        self.assert_logged("(400)", "user_id", "consumer key 'moodle'")

    @async_test
    async def test_wrong_message_type_or_version(self):
        await self.start()
        response, body = await self.launch(lti_message_type="ContentItemSelectionRequest")
        self.assert_refused(response, body, 400, "lti_message_type", "ContentItemSelectionRequest")
        response, body = await self.launch(lti_version="LTI-2p0")
        self.assert_refused(response, body, 400, "lti_version")
        self.assert_nothing_created()

    @async_test
    async def test_malformed_oauth(self):
        await self.start()
        response, body = await self.post(self.signed(
            launch_fields(), extra_oauth={"oauth_signature_method": "PLAINTEXT"}))
        self.assert_refused(response, body, 400, "oauth_signature_method", "HMAC-SHA1")
        response, body = await self.post(self.signed(launch_fields(),
                                                     extra_oauth={"oauth_version": "2.0"}))
        self.assert_refused(response, body, 400, "oauth_version")
        params = self.signed(launch_fields())
        response, body = await self.post(params + [("oauth_nonce", "another")])
        self.assert_refused(response, body, 400, "oauth_nonce", "more than once")
        response, body = await self.post(self.signed(launch_fields(), timestamp="soon"))
        self.assert_refused(response, body, 400, "oauth_timestamp")
        self.assert_nothing_created()

    @async_test
    async def test_not_utf8(self):
        await self.start()
        body = oauth1.form_body(self.signed(launch_fields())) + b"&lis_person_name_full=Caf%E9"
        response, text = await self.post(body)
        self.assert_refused(response, text, 400, "UTF-8")
        response, text = await self.post(b"user_id=caf\xc3\xa9&" + oauth1.form_body(
            self.signed(launch_fields())))
        self.assert_refused(response, text, 400, "non-ASCII")
        body = oauth1.form_body(self.signed(launch_fields(lis_person_name_full="Ada\0")))
        response, text = await self.post(body)
        self.assert_refused(response, text, 400, "lis_person_name_full", "NUL")
        self.assert_nothing_created()

    @async_test
    async def test_not_a_form(self):
        await self.start()
        body = oauth1.form_body(self.signed(launch_fields()))
        response, text = await self.post(body, headers={"Content-Type": ["application/json"]})
        self.assert_refused(response, text, 400, "application/x-www-form-urlencoded")
        response, text = await self.client().get("/lti/launch")
        self.assertEqual(response.code, 405)
        self.assert_nothing_created()

    @async_test
    async def test_a_consumer_configured_from_the_environment_format(self):
        # [lti] consumers as the EMAILD_LTI_CONSUMERS string "k=s,k2=s2"
        await self.start(consumers=f"{KEY}={SECRET}, lms2=another-secret-1234")
        self.assert_launched(*await self.launch(key="lms2", secret="another-secret-1234"))
        response, body = await self.launch(key=KEY2, secret=SECRET2)
        self.assert_refused(response, body, 401, "Unknown consumer key")
