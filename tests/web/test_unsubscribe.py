"""
Unsubscribe links, RFC 8058 one-click, the preferences page, and the
sender suppressing mail queued before the click: real HTTP on a loopback
port, a real database.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
import time
from http.cookiejar import Cookie

from twisted.internet import defer, reactor

from emaild.outbound.sender import Sender
from emaild.people.store import PeopleStore
from tests.fakes import ScriptedTransport
from tests.support import altered, wait_for
from tests.webtest import WebTestCase

FORM = {"Content-Type": ["application/x-www-form-urlencoded"]}


class UnsubscribeTestCase(WebTestCase):
    async def setup(self, title="Physics 101", **sections):
        await self.start_web(smtp={"relay_domain": "mail.course.test"}, **sections)
        self.people = PeopleStore(self.db)
        self.ann = await self.people.add("ann@example.org", "Ann")
        self.course_id = self.query(
            "INSERT INTO courses (context_id, title) VALUES ('phys', %s) RETURNING id", (title,))[0][0]
        self.query("INSERT INTO course_members (course_id, person_id, roles) VALUES (%s, %s, %s)",
                   (self.course_id, self.ann.id, ["Learner"]))

    async def announce(self, kind="announcement", template="announcement", course=True):
        report = await self.outbox.enqueue_people(
            template, [(self.ann.id, {"subject": "News", "body": "Hello"})],
            kind=kind, course_id=self.course_id if course else None)
        (oid,) = report.ids
        return oid

    def message(self, oid):
        data = self.query("SELECT body FROM outbox WHERE id = %s", (oid,))[0][0]
        return email.message_from_bytes(bytes(data), policy=email.policy.default)

    def unsubscribe_path(self, oid) -> str:
        header = self.message(oid)["List-Unsubscribe"]
        url = re.match(r"<([^>]+)>", header).group(1)
        self.assertTrue(url.startswith(self.base + "/unsubscribe/"))
        return url[len(self.base):]

    def optouts(self):
        return self.query("SELECT person_id, course_id, kind, source FROM mail_optouts ORDER BY id")


class UnsubscribePageTests(UnsubscribeTestCase):
    @defer.inlineCallbacks
    def test_get_head_and_prefetch_change_nothing(self):
        yield defer.ensureDeferred(self.setup())
        path = self.unsubscribe_path((yield defer.ensureDeferred(self.announce())))
        browser = self.client()
        response, body = yield defer.ensureDeferred(browser.get(path))
        self.assertEqual(response.code, 200)
        self.assertIn("Stop Announcements from the course team in Physics 101", body)
        self.assertIn("Stop all mail from Physics 101", body)
        self.assertIn('name="choice" value="kind"', body)
        self.assertIn('name="choice" value="course"', body)
        self.assertEqual(response.headers.getRawHeaders("referrer-policy"), ["no-referrer"])
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))
        response, body = yield defer.ensureDeferred(browser.request("HEAD", path))
        self.assertEqual(response.code, 200)
        for agent in ["Mozilla/5.0 (compatible; Microsoft Office SafeLinks)",
                      "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko)"
                      " Chrome/120.0 Safari/537.36 Google-Read-Aloud",
                      "Barracuda Sentinel (EE)"]:
            response, _ = yield defer.ensureDeferred(self.client().get(
                path, headers={"User-Agent": [agent], "Purpose": ["prefetch"],
                               "Sec-Purpose": ["prefetch"]}))
            self.assertEqual(response.code, 200)
        self.assertEqual(self.optouts(), [])
        self.assertEqual(self.query("SELECT uses FROM links WHERE purpose = 'unsubscribe'"), [(0,)])

    @defer.inlineCallbacks
    def test_post_this_kind_of_mail(self):
        yield defer.ensureDeferred(self.setup())
        path = self.unsubscribe_path((yield defer.ensureDeferred(self.announce())))
        response, body = yield defer.ensureDeferred(self.client().post(path, data={"choice": "kind"}))
        self.assertEqual(response.code, 200)
        self.assertIn("You are unsubscribed", body)
        self.assertIn("Announcements from the course team in Physics 101", body)
        self.assertEqual(self.optouts(), [(self.ann.id, self.course_id, "announcement", "web")])
        # twice is harmless
        response, _ = yield defer.ensureDeferred(self.client().post(path, data={"choice": "kind"}))
        self.assertEqual(response.code, 200)
        self.assertEqual(len(self.optouts()), 1)

    @defer.inlineCallbacks
    def test_post_all_mail_from_this_course(self):
        yield defer.ensureDeferred(self.setup())
        path = self.unsubscribe_path((yield defer.ensureDeferred(self.announce(kind="digest"))))
        response, body = yield defer.ensureDeferred(self.client().post(path, data={"choice": "course"}))
        self.assertEqual(response.code, 200)
        self.assertIn("all mail from Physics 101", body)
        self.assertEqual(self.optouts(), [(self.ann.id, self.course_id, None, "web")])

    @defer.inlineCallbacks
    def test_mail_without_a_course_offers_all_mail(self):
        yield defer.ensureDeferred(self.setup())
        path = self.unsubscribe_path((yield defer.ensureDeferred(self.announce(course=False))))
        _, body = yield defer.ensureDeferred(self.client().get(path))
        self.assertIn("Stop Announcements from the course team<", body)
        self.assertIn("Stop all mail from every course", body)
        yield defer.ensureDeferred(self.client().post(path, data={"choice": "course"}))
        self.assertEqual(self.optouts(), [(self.ann.id, None, None, "web")])

    @defer.inlineCallbacks
    def test_post_without_a_choice_changes_nothing(self):
        yield defer.ensureDeferred(self.setup())
        path = self.unsubscribe_path((yield defer.ensureDeferred(self.announce())))
        for data in [{}, {"choice": "everything"}, {"List-Unsubscribe": "Yes-Please"}]:
            response, _ = yield defer.ensureDeferred(self.client().post(path, data=data))
            self.assertEqual(response.code, 400)
        self.assertEqual(self.optouts(), [])

    @defer.inlineCallbacks
    def test_rfc8058_one_click_without_cookies(self):
        yield defer.ensureDeferred(self.setup())
        oid = yield defer.ensureDeferred(self.announce())
        self.assertEqual(self.message(oid)["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click")
        path = self.unsubscribe_path(oid)
        browser = self.client()
        response, body = yield defer.ensureDeferred(browser.post(
            path, data=b"List-Unsubscribe=One-Click", headers=FORM))
        self.assertEqual(response.code, 200)
        self.assertIsNone(response.headers.getRawHeaders("location"))
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/plain; charset=utf-8"])
        self.assertIn("Unsubscribed", body)
        self.assertEqual(list(browser.cookies), [])
        self.assertEqual(self.optouts(), [(self.ann.id, self.course_id, "announcement", "one-click")])
        self.assertEqual(self.query("SELECT uses FROM links WHERE purpose = 'unsubscribe'"), [(1,)])

    @defer.inlineCallbacks
    def test_rfc8058_one_click_as_multipart_form_data(self):
        # RFC 8058 3.1: the POST SHOULD be multipart/form-data
        yield defer.ensureDeferred(self.setup())
        path = self.unsubscribe_path((yield defer.ensureDeferred(self.announce())))
        body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n"
                b"One-Click\r\n--XyZ--\r\n")
        response, text = yield defer.ensureDeferred(self.client().post(
            path, data=body, headers={"Content-Type": ["multipart/form-data; boundary=XyZ"]}))
        self.assertEqual(response.code, 200, text)
        self.assertEqual(self.optouts(), [(self.ann.id, self.course_id, "announcement", "one-click")])

    @defer.inlineCallbacks
    def test_tampered_tokens_are_404(self):
        yield defer.ensureDeferred(self.setup())
        path = self.unsubscribe_path((yield defer.ensureDeferred(self.announce())))
        token = path.rsplit("/", 1)[1]
        login = yield defer.ensureDeferred(self.web.links.login_url(self.ann.id, "/home"))
        flipped = altered(token)
        for bad in [flipped, token[:-1], token + "x", token.upper() if token.upper() != token else
                    token.lower(), login.rsplit("/", 1)[1], "0" * 12, "%00", "a" * 200]:
            response, body = yield defer.ensureDeferred(self.client().get(f"/unsubscribe/{bad}"))
            self.assertEqual(response.code, 404, bad)
            self.assertIn("not valid", body)
            response, _ = yield defer.ensureDeferred(self.client().post(
                f"/unsubscribe/{bad}", data=b"List-Unsubscribe=One-Click", headers=FORM))
            self.assertEqual(response.code, 404, bad)
            response, _ = yield defer.ensureDeferred(self.client().post(
                f"/unsubscribe/{bad}", data={"choice": "course"}))
            self.assertEqual(response.code, 404, bad)
        self.assertEqual(self.optouts(), [])

    @defer.inlineCallbacks
    def test_an_expired_unsubscribe_link_still_works(self):
        yield defer.ensureDeferred(self.setup())
        path = self.unsubscribe_path((yield defer.ensureDeferred(self.announce())))
        self.query("UPDATE links SET expires_at = now() - interval '400 days'")
        response, _ = yield defer.ensureDeferred(self.client().get(path))
        self.assertEqual(response.code, 200)
        response, _ = yield defer.ensureDeferred(self.client().post(
            path, data=b"List-Unsubscribe=One-Click", headers=FORM))
        self.assertEqual(response.code, 200)
        self.assertEqual(len(self.optouts()), 1)

    @defer.inlineCallbacks
    def test_course_titles_are_escaped(self):
        yield defer.ensureDeferred(self.setup(title='<script>alert("x")</script>'))
        path = self.unsubscribe_path((yield defer.ensureDeferred(self.announce())))
        _, body = yield defer.ensureDeferred(self.client().get(path))
        self.assertNotIn("<script>", body)
        self.assertIn("&lt;script&gt;", body)


class SuppressionTests(UnsubscribeTestCase):
    @defer.inlineCallbacks
    def test_mail_queued_before_the_click_is_suppressed_transactional_still_goes(self):
        yield defer.ensureDeferred(self.setup())
        news = yield defer.ensureDeferred(self.announce())
        login = yield defer.ensureDeferred(self.announce(kind="login", template="login"))
        self.assertIsNone(self.message(login)["List-Unsubscribe"])
        response, _ = yield defer.ensureDeferred(self.client().post(
            self.unsubscribe_path(news), data=b"List-Unsubscribe=One-Click", headers=FORM))
        self.assertEqual(response.code, 200)

        transport = ScriptedTransport(reactor)
        sender = Sender(reactor, self.outbox.store, transport, self.cfg, owner="test")
        sender.startService()
        yield sender.starting
        self.addCleanup(lambda: sender.running and sender.stopService())
        yield wait_for(lambda: self.query(
            "SELECT count(*) FROM outbox WHERE state IN ('sent', 'suppressed')")[0][0] == 2)
        yield sender.stopService()
        self.assertEqual(transport.sent_ids(), [login])
        self.assertEqual(sender.stats["suppressed"], 1)
        state, reason = self.query("SELECT state, reason FROM outbox WHERE id = %s", (news,))[0]
        self.assertEqual(state, "suppressed")
        day = time.strftime("%Y-%m-%d", time.gmtime())
        self.assertEqual(reason, f"suppressed: person {self.ann.id} unsubscribed from announcement"
                                 f" mail in course {self.course_id} (one-click, {day})")
        self.assertEqual(self.query("SELECT state FROM outbox WHERE id = %s", (login,)), [("sent",)])


class PreferencesTests(UnsubscribeTestCase):
    async def sign_in(self, person_id):
        """
        A browser with a session for C{person_id} (as after a login link).
        """
        token, session = await self.web.sessions.store.create(person_id, time.time(), 3600, None)
        browser = self.client()
        browser.cookies.set_cookie(Cookie(
            0, self.web.sessions.cookie_name.decode(), token, None, False, "127.0.0.1", False,
            False, "/", True, False, None, False, None, None, {}))
        return browser

    @staticmethod
    def switches(body) -> dict[str, bool]:
        return {value: bool(checked) for value, checked in re.findall(
            r'<input type="checkbox" name="on" value="([^"]+)"( checked)?>', body)}

    @staticmethod
    def csrf(body) -> str:
        return html.unescape(re.search(r'name="csrf_token" value="([^"]+)"', body).group(1))

    @defer.inlineCallbacks
    def test_needs_a_session(self):
        yield defer.ensureDeferred(self.setup())
        response, body = yield defer.ensureDeferred(self.client().get("/preferences"))
        self.assertEqual(response.code, 401)
        self.assertIn("sign in", body)
        self.assertNotIn("csrf_token", body)
        response, _ = yield defer.ensureDeferred(self.client().post(
            "/preferences", data={"csrf_token": "x", "on": "*:*"}))
        self.assertEqual(response.code, 401)

    @defer.inlineCallbacks
    def test_toggle_kinds_and_resubscribe_with_csrf(self):
        yield defer.ensureDeferred(self.setup())
        # an earlier one-click unsubscribe shows as off
        path = self.unsubscribe_path((yield defer.ensureDeferred(self.announce(kind="digest"))))
        yield defer.ensureDeferred(self.client().post(
            path, data=b"List-Unsubscribe=One-Click", headers=FORM))
        browser = yield defer.ensureDeferred(self.sign_in(self.ann.id))
        response, body = yield defer.ensureDeferred(browser.get("/preferences"))
        self.assertEqual(response.code, 200)
        for description in ["Announcements from the course team",
                            "Notifications about activity in your groups",
                            "The weekly digest of what happened in the course",
                            "All mail from Physics 101", "Physics 101"]:
            self.assertIn(description, body)
        self.assertNotIn("Sign-in links you asked for", body)  # not unsubscribable
        switches = self.switches(body)
        c = self.course_id
        self.assertEqual(switches, {
            "*:*": True, "*:announcement": True, "*:digest": True, "*:group": True,
            "*:notification": True, f"{c}:*": True, f"{c}:announcement": True,
            f"{c}:digest": False, f"{c}:group": True, f"{c}:notification": True})
        csrf = self.csrf(body)

        # turn off announcements in the course and the digest everywhere;
        # turn the course's digest back on
        on = [k for k in switches if k not in (f"{c}:announcement", "*:digest")]
        response, _ = yield defer.ensureDeferred(browser.post(
            "/preferences", data=[("csrf_token", csrf)] + [("on", k) for k in on]))
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders("location"),
                         [self.base + "/preferences?saved=1"])
        self.assertEqual(sorted(self.optouts(), key=str), sorted([
            (self.ann.id, None, "digest", "preferences"),
            (self.ann.id, c, "announcement", "preferences")], key=str))
        response, body = yield defer.ensureDeferred(browser.get("/preferences?saved=1"))
        self.assertIn("Your preferences are saved", body)
        switches = self.switches(body)
        self.assertFalse(switches[f"{c}:announcement"])
        self.assertFalse(switches["*:digest"])
        self.assertTrue(switches[f"{c}:digest"])
        self.assertIn("not sent while", body)  # the course digest is on but all digests are off

        # all mail off, then everything back on
        response, _ = yield defer.ensureDeferred(browser.post(
            "/preferences", data=[("csrf_token", csrf)] + [("on", k) for k in switches if k != "*:*"]))
        self.assertEqual(response.code, 303)
        self.assertEqual(self.optouts(), [(self.ann.id, None, None, "preferences")])
        response, _ = yield defer.ensureDeferred(browser.post(
            "/preferences", data=[("csrf_token", csrf)] + [("on", k) for k in switches]))
        self.assertEqual(response.code, 303)
        self.assertEqual(self.optouts(), [])

    @defer.inlineCallbacks
    def test_post_without_the_csrf_token_is_refused(self):
        yield defer.ensureDeferred(self.setup())
        browser = yield defer.ensureDeferred(self.sign_in(self.ann.id))
        _, body = yield defer.ensureDeferred(browser.get("/preferences"))
        csrf = self.csrf(body)
        for data in [[("on", "*:digest")], [("csrf_token", altered(csrf)), ("on", "*:digest")],
                     [("csrf_token", ""), ("on", "*:digest")]]:
            response, body = yield defer.ensureDeferred(browser.post("/preferences", data=data))
            self.assertEqual(response.code, 403)
            self.assertIn("expired", body)
        # another person's session does not carry this one's token either
        bob = yield self.people.add("bob@example.org", "Bob")
        other = yield defer.ensureDeferred(self.sign_in(bob.id))
        response, _ = yield defer.ensureDeferred(other.post(
            "/preferences", data=[("csrf_token", csrf), ("on", "*:digest")]))
        self.assertEqual(response.code, 403)
        self.assertEqual(self.optouts(), [])

    @defer.inlineCallbacks
    def test_forged_scopes_are_ignored(self):
        yield defer.ensureDeferred(self.setup())
        browser = yield defer.ensureDeferred(self.sign_in(self.ann.id))
        _, body = yield defer.ensureDeferred(browser.get("/preferences"))
        switches = self.switches(body)
        # a course the person is not in, junk, and every shown switch on
        response, _ = yield defer.ensureDeferred(browser.post("/preferences", data=[
            ("csrf_token", self.csrf(body)), ("on", "999:*"), ("on", "x\n:y"), ("on", "\xff")]
            + [("on", k) for k in switches]))
        self.assertEqual(response.code, 303)
        self.assertEqual(self.optouts(), [])
