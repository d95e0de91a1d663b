"""
The learner's home page and signing out, over real HTTP.
"""

from __future__ import annotations

import re
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from tests.support import altered
from tests.web.test_web_links import LinkTestCase, async_test


class HomeTests(LinkTestCase):
    async def signed_in(self, person):
        browser = self.client()
        url = await self.web.links.login_url(person.id, "/home")
        response, _ = await browser.get(urlsplit(url).path)
        self.assertEqual(response.code, 303)
        browser.session_cookie = self.cookie(response)
        return browser

    def cookie(self, response) -> tuple[str, str]:
        cookie = SimpleCookie()
        cookie.load(response.headers.getRawHeaders("set-cookie")[0])
        (name,) = cookie.keys()
        return name, cookie[name].value

    def add_course(self, person, context_id, title, roles, groups=()):
        ((course_id,),) = self.query(
            "INSERT INTO courses (consumer_key, context_id, title) VALUES ('k', %s, %s)"
            " RETURNING id", (context_id, title))
        self.query("INSERT INTO course_members (course_id, person_id, roles) VALUES (%s, %s, %s)",
                   (course_id, person.id, list(roles)))
        for name, left in groups:
            ((group_id,),) = self.query(
                "INSERT INTO groups (course_id, name) VALUES (%s, %s) RETURNING id",
                (course_id, name))
            self.query("INSERT INTO group_members (group_id, person_id, left_at)"
                       " VALUES (%s, %s, CASE WHEN %s THEN now() END)",
                       (group_id, person.id, left))

    def csrf(self, body: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', body).group(1)

    @async_test
    async def test_not_signed_in(self):
        await self.start_web()
        browser = self.client()
        for headers in ({}, {"Cookie": "emaild_session=" + "x" * 43},
                        {"Cookie": "emaild_session=%%"}):
            response, body = await browser.get("/home", headers=headers)
            self.assertEqual(response.code, 401)
            self.assertIn("not signed in", body)
            self.assertIn("learning platform", body)
            self.assertIn("emails", body)
            self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])
            self.assertNotIn("Traceback", body)

    @async_test
    async def test_home_lists_courses_and_groups_escaped(self):
        await self.start_web()
        ada = await self.person(name="Ada <script>alert(1)</script> & Co")
        other = await self.person("bob@example.org", "Bob")
        self.add_course(ada, "c1", "Networks <b>101</b>", ["Learner"],
                        [("Study group \"A\"", False), ("Old group", True)])
        self.add_course(ada, "c2", "", ["urn:lti:role:ims/lis/Instructor"])
        self.add_course(other, "c3", "Bob's course", ["Learner"])
        browser = await self.signed_in(ada)
        response, body = await browser.get("/home")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/html; charset=utf-8"])
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])
        self.assertIn("Ada &lt;script&gt;alert(1)&lt;/script&gt; &amp; Co", body)
        self.assertNotIn("<script>", body)
        self.assertIn("Networks &lt;b&gt;101&lt;/b&gt;", body)
        self.assertIn("(Learner)", body)
        self.assertIn("c2", body)  # a course without a title shows its context id
        self.assertIn("(Instructor)", body)
        self.assertIn("Study group &#34;A&#34;", body)
        self.assertNotIn("Old group", body)  # left
        self.assertNotIn("Bob", body)
        self.assertIn('href="/preferences"', body)
        self.assertIn('action="/logout"', body)

    @async_test
    async def test_home_without_courses(self):
        await self.start_web()
        ada = await self.person()
        browser = await self.signed_in(ada)
        response, body = await browser.get("/home")
        self.assertEqual(response.code, 200)
        self.assertIn("not in any course", body)
        self.assertIn("not in any group", body)

    @async_test
    async def test_logout_needs_the_csrf_token(self):
        await self.start_web()
        ada = await self.person()
        browser = await self.signed_in(ada)
        response, body = await browser.get("/home")
        token = self.csrf(body)
        for data in (None, {"csrf_token": ""}, {"csrf_token": altered(token)},
                     {"csrf_token": "é"}):
            response, body = await browser.post("/logout", data=data)
            self.assertEqual(response.code, 403, data)
            self.assertNotIn("Traceback", body)
            self.assertIsNone(response.headers.getRawHeaders("set-cookie"))
        response, body = await browser.get("/home")
        self.assertEqual(response.code, 200)
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions WHERE revoked_at IS NULL"),
                         [(1,)])

    @async_test
    async def test_logout_ends_the_session(self):
        await self.start_web()
        ada = await self.person()
        browser = await self.signed_in(ada)
        name, value = browser.session_cookie
        response, body = await browser.get("/home")
        response, body = await browser.post("/logout", data={"csrf_token": self.csrf(body)})
        self.assertEqual(response.code, 200)
        self.assertIn("signed out", body)
        raw = response.headers.getRawHeaders("set-cookie")[0]
        self.assertIn("Max-Age=0", raw)
        self.assertTrue(raw.startswith(f"{name}=;"))
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions WHERE revoked_at IS NULL"),
                         [(0,)])
        response, _ = await browser.get("/home")
        self.assertEqual(response.code, 401)
        # the old cookie, replayed, is dead
        response, _ = await self.client().get("/home", headers={"Cookie": f"{name}={value}"})
        self.assertEqual(response.code, 401)
        # signing out again (a stale tab) just says so
        response, body = await browser.post("/logout", data={"csrf_token": "whatever"})
        self.assertEqual(response.code, 200)
        self.assertIn("signed out", body)

    @async_test
    async def test_logout_is_post_only(self):
        await self.start_web()
        response, body = await self.client().get("/logout")
        self.assertEqual(response.code, 405)
