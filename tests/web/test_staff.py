"""
The staff pages over real HTTP: who gets in, the announcement preview and
confirmation, CSRF, delivery status, and the weekly update note.
"""

from __future__ import annotations

import re

from emaild.digest.store import DigestStore
from tests.web.test_web_groups import GroupPageTestCase
from tests.web.test_web_links import async_test


class StaffTests(GroupPageTestCase):
    async def setup_staff(self):
        """
        The group page's course (Ada and Bob in Team <A>, Dan in Other):
        Ines is its instructor (an LTI URN), Ada and Bob are learners, Olga
        instructs another course.
        """
        await self.setup_group()
        people = self.web.people
        self.course_id = (await self.web.groups.get(self.group_id)).course_id
        self.ines = await self.person("ines@example.org", "Ines Instructor")
        self.olga = await self.person("olga@example.org", "Olga Other")
        await people.join_course(self.course_id, self.ines.id, ["urn:lti:role:ims/lis/Instructor"])
        for p in (self.ada, self.bob, self.dan):
            await people.join_course(self.course_id, p.id, ["urn:lti:role:ims/lis/Learner"])
        other = await people.ensure_course("k", "c2", "Other course")
        await people.join_course(other, self.olga.id, ["Instructor"])
        self.page = f"/staff/courses/{self.course_id}"

    @async_test
    async def test_who_gets_in(self):
        await self.setup_staff()
        response, _ = await self.client().get(self.page)
        self.assertEqual(response.code, 401)
        for person in (self.ada, self.olga):  # a learner; another course's instructor
            browser = await self.signed_in(person)
            response, body = await browser.get(self.page)
            self.assertEqual(response.code, 403, person)
            self.assertNotIn("Team", body)
            response, _ = await browser.post(self.page + "/announce",
                                             data={"subject": "s", "body": "b"})
            self.assertEqual(response.code, 403)
        browser = await self.signed_in(self.ines)
        response, body = await browser.get(self.page)
        self.assertEqual(response.code, 200)
        self.assertIn("Networks &lt;101&gt;", body)
        self.assertIn("Team &lt;A&gt;", body)
        self.assertIn("Ada &lt;Lovelace&gt;", body)
        self.assertIn("Dan Outsider", body)
        self.assertNotIn("Cy Gone", body)  # left the group
        response, _ = await browser.get("/staff/courses/999999")
        self.assertEqual(response.code, 404)
        self.assertEqual(self.query("SELECT count(*) FROM outbox"), [(0,)])

    @async_test
    async def test_preview_escaped_then_send(self):
        await self.setup_staff()
        browser = await self.signed_in(self.ines)
        _, body = await browser.get(self.page)
        csrf = self.csrf(body)
        message = {"csrf_token": csrf, "target": f"group:{self.group_id}",
                   "subject": "Lab <b>moved</b>", "body": "Room <script>alert(1)</script> & 4"}
        response, body = await browser.post(self.page + "/announce/preview", data=message)
        self.assertEqual(response.code, 200)
        self.assertIn("Room &lt;script&gt;alert(1)&lt;/script&gt; &amp; 4", body)
        self.assertNotIn("<script>", body)
        self.assertIn("Lab &lt;b&gt;moved&lt;/b&gt;", body)
        self.assertIn("it goes to 2\npeople", body)  # Ada and Bob
        self.assertIn("ada@example.org gets", body)
        self.assertEqual(self.query("SELECT count(*) FROM outbox"), [(0,)])
        self.assertEqual(self.query("SELECT count(*) FROM links"), [(1,)])  # only the sign-in
        response, _ = await browser.post(self.page + "/announce", data=message)
        self.assertEqual(response.code, 303)
        location = response.headers.getRawHeaders("location")[0]
        label = re.search(r"sent=([\w-]+)", location).group(1)
        rows = self.query("SELECT recipient, kind, course_id FROM outbox WHERE batch = %s"
                          " ORDER BY 1", (label,))
        self.assertEqual(rows, [("ada@example.org", "announcement", self.course_id),
                                ("bob@example.org", "announcement", self.course_id)])
        self.query("UPDATE outbox SET state = 'failed', reason = '550 5.1.1 <no> such user'"
                   " WHERE batch = %s AND recipient = 'bob@example.org'", (label,))
        response, body = await browser.get(location)
        self.assertEqual(response.code, 200)
        self.assertIn(f"Announcement {label} is queued", body)
        self.assertIn("sent 0 of 2 &middot; queued 1", body)
        self.assertIn("failed 1", body)
        self.assertIn("550 5.1.1 &lt;no&gt; such user", body)
        # re-send to the failed one
        response, _ = await browser.post(self.page + "/resend",
                                         data={"csrf_token": csrf, "label": label})
        self.assertEqual(response.code, 303)
        self.assertEqual(self.query("SELECT recipient FROM outbox WHERE batch = %s",
                                    (label + "-resend1",)), [("bob@example.org",)])

    @async_test
    async def test_csrf_is_enforced(self):
        await self.setup_staff()
        browser = await self.signed_in(self.ines)
        message = {"target": "course", "subject": "s", "body": "b"}
        for path in ("/announce/preview", "/announce", "/note"):
            for token in (None, "wrong"):
                data = dict(message, **({"csrf_token": token} if token else {}))
                response, body = await browser.post(self.page + path, data=data)
                self.assertEqual(response.code, 403, (path, token))
                self.assertIn("out of date", body)
        self.assertEqual(self.query("SELECT count(*) FROM outbox"), [(0,)])
        self.assertEqual(self.query("SELECT count(*) FROM digest_notes"), [(0,)])

    @async_test
    async def test_bad_forms_and_notes(self):
        await self.setup_staff()
        browser = await self.signed_in(self.ines)
        _, body = await browser.get(self.page)
        csrf = self.csrf(body)
        other_group = await self.web.people.ensure_group(
            (await self.web.people.find_courses("c2"))[0].id, "Elsewhere")
        for data, reason in (({"target": "course", "subject": "", "body": "b"}, "needs a subject"),
                             ({"target": f"group:{other_group}", "subject": "s", "body": "b"},
                              "Choose the whole course")):
            response, body = await browser.post(self.page + "/announce/preview",
                                                data=dict(data, csrf_token=csrf))
            self.assertEqual(response.code, 400)
            self.assertIn(reason, body)
        response, _ = await browser.post(self.page + "/note",
                                         data={"csrf_token": csrf, "note": "Exam <Friday>"})
        self.assertEqual(response.code, 303)
        ((week, note),) = self.query("SELECT week, note FROM digest_notes")
        self.assertEqual(note, "Exam <Friday>")
        self.assertEqual(await DigestStore(self.db).note(self.course_id, week), note)
        _, body = await browser.get(self.page + "?noted=1")
        self.assertIn(f"The note for the {week} weekly update is saved", body)
        self.assertIn("Exam &lt;Friday&gt;</textarea>", body)
