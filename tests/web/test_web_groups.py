"""
The group page and posting from it, over real HTTP against a real database.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tests.support import altered
from tests.web.test_web_links import LinkTestCase, async_test


class GroupPageTestCase(LinkTestCase):
    async def setup_group(self):
        """
        Course "Networks <101>" with group "Team <A>": Ada and Bob are
        members, Cy left; Dan is in no group.  A second group "Other" has
        only Dan.
        """
        await self.start_web()
        people = self.web.people
        self.ada = await self.person("ada@example.org", "Ada <Lovelace>")
        self.bob = await self.person("bob@example.org", "Bob Builder")
        self.cy = await self.person("cy@example.org", "Cy Gone")
        self.dan = await self.person("dan@example.org", "Dan Outsider")
        course = await people.ensure_course("k", "c1", "Networks <101>")
        self.group_id = await people.ensure_group(course, "Team <A>")
        self.other_group = await people.ensure_group(course, "Other")
        for person in (self.ada, self.bob, self.cy):
            await people.join_group(self.group_id, person.id)
        await people.join_group(self.other_group, self.dan.id)
        await self.web.groups.leave(self.group_id, self.cy.id)

    async def signed_in(self, person):
        browser = self.client()
        url = await self.web.links.login_url(person.id, "/home")
        response, _ = await browser.get(urlsplit(url).path)
        self.assertEqual(response.code, 303)
        return browser

    async def address_of(self, person, group_id=None) -> str:
        member = await self.web.groups.member(group_id or self.group_id, person.id)
        return self.web.reply_addresses.address(member.token)

    def csrf(self, body: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', body).group(1)

    def visits(self):
        return self.query("SELECT group_id, person_id FROM group_visits ORDER BY id")

    def inbound(self):
        return self.query(
            "SELECT r.purpose, r.group_id, r.person_id, r.address, m.peer"
            " FROM inbound_recipients r JOIN inbound_messages m ON m.id = r.message_id"
            " ORDER BY r.id")


class GroupPageTests(GroupPageTestCase):
    @async_test
    async def test_a_member_sees_the_group_but_no_addresses(self):
        await self.setup_group()
        ((thread,),) = self.query(
            "INSERT INTO group_posts (group_id, author_id, message_id, subject)"
            " VALUES (%s, %s, '<1@x>', 'Week 1 <questions>') RETURNING id",
            (self.group_id, self.bob.id))
        self.query("INSERT INTO group_posts (group_id, author_id, thread_id, message_id, subject)"
                   " VALUES (%s, %s, %s, '<2@x>', 'Re: Week 1')",
                   (self.group_id, self.ada.id, thread))
        browser = await self.signed_in(self.ada)
        response, body = await browser.get(f"/groups/{self.group_id}")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["text/html; charset=utf-8"])
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])
        self.assertIn("Team &lt;A&gt;", body)
        self.assertIn("Networks &lt;101&gt;", body)
        self.assertIn("Ada &lt;Lovelace&gt;", body)
        self.assertIn("Bob Builder", body)
        self.assertNotIn("Cy Gone", body)  # left
        self.assertNotIn("Dan", body)
        self.assertIn("Week 1 &lt;questions&gt;", body)
        self.assertIn("started by Bob Builder", body)
        self.assertIn("2 posts", body)
        self.assertIn(await self.address_of(self.ada), body)
        # nobody's real address, and no other member's reply address
        self.assertNotIn("@example.org", body)
        for other in (self.bob, self.cy):
            self.assertNotIn(await self.address_of(other), body)
        self.assertEqual(len(re.findall(r"group-[a-z0-9]+@", body)), 1)
        self.assertIn(f'action="/groups/{self.group_id}/post"', body)
        self.assertTrue(self.csrf(body))
        self.assertEqual(self.visits(), [(self.group_id, self.ada.id)])
        await browser.get(f"/groups/{self.group_id}")
        self.assertEqual(len(self.visits()), 2)

    @async_test
    async def test_home_links_to_the_group(self):
        await self.setup_group()
        browser = await self.signed_in(self.ada)
        response, body = await browser.get("/home")
        self.assertIn(f'<a href="/groups/{self.group_id}">Team &lt;A&gt;</a>', body)
        self.assertNotIn(f'href="/groups/{self.other_group}"', body)

    @async_test
    async def test_who_may_not_see_it(self):
        await self.setup_group()
        anonymous = self.client()
        response, body = await anonymous.get(f"/groups/{self.group_id}")
        self.assertEqual(response.code, 401)
        self.assertIn("not signed in", body)
        self.assertNotIn("Team", body)
        response, body = await anonymous.post(f"/groups/{self.group_id}/post",
                                              data={"subject": "s", "text": "t"})
        self.assertEqual(response.code, 401)

        for person in (self.dan, self.cy):  # never a member; left
            browser = await self.signed_in(person)
            response, body = await browser.get(f"/groups/{self.group_id}")
            self.assertEqual(response.code, 403, person)
            self.assertIn("You are not a member of this group.", body)
            self.assertNotIn("Team", body)
            self.assertNotIn("Bob", body)
        response, body = await browser.get("/groups/999999")
        self.assertEqual(response.code, 404)
        self.assertIn("There is no such group.", body)
        response, body = await browser.get("/groups/team")
        self.assertEqual(response.code, 404)
        self.assertEqual(self.visits(), [])


class PostTests(GroupPageTestCase):
    async def page(self, person):
        browser = await self.signed_in(person)
        response, body = await browser.get(f"/groups/{self.group_id}")
        self.assertEqual(response.code, 200)
        return browser, self.csrf(body)

    @async_test
    async def test_a_good_post_goes_to_the_relay(self):
        await self.setup_group()
        browser, token = await self.page(self.ada)
        response, body = await browser.post(
            f"/groups/{self.group_id}/post",
            data={"csrf_token": token, "subject": "  Meeting  on Friday ",
                  "text": "Shall we meet at 5?\r\nAda"})
        self.assertEqual(response.code, 303, body)
        location = response.headers.getRawHeaders("location")[0]
        self.assertEqual(location, f"/groups/{self.group_id}?posted=1")
        ada_address = await self.address_of(self.ada)
        self.assertEqual(self.inbound(),
                         [("relay", self.group_id, self.ada.id, ada_address, "web")])
        ((raw,),) = self.query("SELECT raw FROM inbound_messages")
        self.assertIn(b"Subject: Meeting on Friday", bytes(raw))
        response, body = await browser.get(location)
        self.assertEqual(response.code, 200)
        self.assertIn("Your message is on its way to 1 member.", body)

    @async_test
    async def test_a_bad_csrf_token_is_refused(self):
        await self.setup_group()
        browser, token = await self.page(self.ada)
        for data in ({"subject": "s", "text": "t"}, {"csrf_token": "", "subject": "s", "text": "t"},
                     {"csrf_token": altered(token), "subject": "s", "text": "t"}):
            response, body = await browser.post(f"/groups/{self.group_id}/post", data=data)
            self.assertEqual(response.code, 403, data)
            self.assertNotIn("Traceback", body)
        # another member's token does not work either
        _, bobs = await self.page(self.bob)
        response, _ = await browser.post(f"/groups/{self.group_id}/post",
                                         data={"csrf_token": bobs, "subject": "s", "text": "t"})
        self.assertEqual(response.code, 403)
        self.assertEqual(self.inbound(), [])

    @async_test
    async def test_an_empty_subject_shows_the_form_again(self):
        await self.setup_group()
        browser, token = await self.page(self.ada)
        response, body = await browser.post(
            f"/groups/{self.group_id}/post",
            data={"csrf_token": token, "subject": "   ", "text": "My <b>draft</b> text"})
        self.assertEqual(response.code, 400)
        self.assertIn("Please give your message a subject.", body)
        self.assertIn("My &lt;b&gt;draft&lt;/b&gt; text</textarea>", body)
        self.assertIn(f'action="/groups/{self.group_id}/post"', body)
        self.assertEqual(self.csrf(body), token)
        response, body = await browser.post(
            f"/groups/{self.group_id}/post",
            data={"csrf_token": token, "subject": "Hello \"there\"", "text": ""})
        self.assertEqual(response.code, 400)
        self.assertIn("Please write a message.", body)
        self.assertIn('value="Hello &#34;there&#34;"', body)
        self.assertEqual(self.inbound(), [])

    @async_test
    async def test_a_non_member_cannot_post(self):
        await self.setup_group()
        browser, token = await self.page(self.ada)
        dan = await self.signed_in(self.dan)
        _, body = await dan.get("/home")
        response, body = await dan.post(
            f"/groups/{self.group_id}/post",
            data={"csrf_token": self.csrf(body), "subject": "s", "text": "t"})
        self.assertEqual(response.code, 403)
        self.assertIn("You are not a member of this group.", body)
        self.assertEqual(self.inbound(), [])
