"""
"X is active in your group" notifications, over real HTTP against a real
database: bursts of page loads, several processes, who is left out, the
per-(actor, group) window and the daily limit.
"""

from __future__ import annotations

import email
import time
from email.header import decode_header, make_header
from urllib.parse import urlsplit

from twisted.internet import defer, reactor

from emaild.db.database import Database
from tests.web.test_web_groups import GroupPageTestCase
from tests.web.test_web_links import async_test, text_of


def later(seconds: float):
    return lambda: time.time() + seconds


class NotifyTestCase(GroupPageTestCase):
    def mails(self):
        """(recipient, person id, kind, course id, batch, subject) of queued notifications."""
        return self.query(
            "SELECT recipient, person_id, kind, course_id, batch, subject, body FROM outbox"
            " WHERE template = 'group_active' ORDER BY id")

    def recipients(self):
        return sorted(row[0] for row in self.mails())

    async def open_page(self, browser, group_id=None, times: int = 1):
        gets = [defer.ensureDeferred(browser.get(f"/groups/{group_id or self.group_id}"))
                for _ in range(times)]
        results = await defer.gatherResults(gets, consumeErrors=True)
        for response, body in results:
            self.assertEqual(response.code, 200, body[:300])

    async def setup_group(self, **notifications):
        """The group of L{GroupPageTestCase}, with C{[notifications]} options."""
        if notifications:
            original = self.start_web

            async def start_web(**sections):
                return await original(notifications=notifications, **sections)

            self.start_web = start_web
        await super().setup_group()

    async def course_id(self):
        return (await self.web.groups.get(self.group_id)).course_id


class BurstTests(NotifyTestCase):
    @async_test
    async def test_a_hundred_page_loads_make_one_mail_per_recipient(self):
        await self.setup_group()
        ada = await self.signed_in(self.ada)
        await self.open_page(ada, times=100)
        self.assertEqual(len(self.visits()), 100)
        ((recipient, person_id, kind, course_id, batch, subject, body),) = self.mails()
        self.assertEqual((recipient, person_id, kind, course_id),
                         ("bob@example.org", self.bob.id, "notification", await self.course_id()))
        (notice,) = await self.web.notifier.store.notices()
        notice_id, group_id, actor_id = notice.notice_id, notice.group_id, notice.actor_id
        self.assertEqual((group_id, actor_id), (self.group_id, self.ada.id))
        self.assertEqual(batch, f"notify:{notice_id}")
        self.assertEqual(subject, "Ada <Lovelace> is active in Team <A>")
        message = email.message_from_bytes(bytes(body))
        self.assertEqual(str(make_header(decode_header(message["Subject"]))),
                         "Ada <Lovelace> is active in Team <A>")
        self.assertTrue(message["List-Unsubscribe"])  # a kind people can turn off
        html = next(p for p in message.walk() if p.get_content_type() == "text/html")
        self.assertIn("Ada &lt;Lovelace&gt;", html.get_payload(decode=True).decode())

        # the link in the mail signs Bob in and lands on the group page
        text = text_of(body)
        self.assertIn("Ada <Lovelace> is on the page of your group Team <A>", text)
        link = next(word for word in text.split() if word.startswith(self.base + "/email/"))
        bob = self.client()
        response, _ = await bob.get(urlsplit(link).path)
        self.assertEqual(response.code, 303)
        self.assertTrue(response.headers.getRawHeaders("location")[0]
                        .endswith(f"/groups/{self.group_id}"))
        # and Bob, now online, opening the page: Ada is online too, nobody is told
        await self.open_page(bob)
        self.assertEqual(len(self.mails()), 1)

    @async_test
    async def test_several_processes_send_one_mail(self):
        """
        Notifiers with their own database pools (as in separate emaild
        processes) all told at once: the database lets one through.
        """
        await self.setup_group()
        notifiers = [self.web.notifier]
        for _ in range(4):
            db = Database(reactor, self.dsn, pool_size=3)
            await db.start()
            self.addCleanup(db.close)
            notifiers.append(self.homeserver(self.cfg, db).get_notifier())
        await self.web.groups.record_visit(self.group_id, self.ada.id)
        results = await defer.gatherResults(
            [defer.ensureDeferred(notifiers[i % 5].visited(self.group_id, self.ada.id))
             for i in range(100)], consumeErrors=True)
        self.assertEqual(sorted(results, reverse=True)[:2], [1, 0])
        self.assertEqual(self.recipients(), ["bob@example.org"])
        self.assertEqual(len(self.query("SELECT * FROM group_activity_notices")), 1)


class WhoHearsTests(NotifyTestCase):
    @async_test
    async def test_online_and_opted_out_members_are_left_out(self):
        await self.setup_group()
        people = self.web.people
        course = await self.course_id()
        extra = {}
        for name in ("eve", "fay", "gus", "hal", "ivy", "joe"):
            extra[name] = await self.person(f"{name}@example.org", name.title())
            await people.join_group(self.group_id, extra[name].id)
        # Eve turned notifications off in this course, Hal all mail everywhere,
        # Ivy only the digest
        self.query("INSERT INTO mail_optouts (person_id, course_id, kind, source)"
                   " VALUES (%s, %s, 'notification', 'web'), (%s, NULL, NULL, 'web'),"
                   " (%s, %s, 'digest', 'web')",
                   (extra["eve"].id, course, extra["hal"].id, extra["ivy"].id, course))
        # Fay is signed in (and just made a request); Gus opened the other
        # group's page a minute ago; Joe was last seen an hour ago
        await self.signed_in(extra["fay"])
        self.query("INSERT INTO group_visits (group_id, person_id, at)"
                   " VALUES (%s, %s, now() - interval '1 minute'),"
                   "        (%s, %s, now() - interval '1 hour')",
                   (self.other_group, extra["gus"].id, self.group_id, extra["joe"].id))
        ada = await self.signed_in(self.ada)
        await self.open_page(ada)
        self.assertEqual(self.recipients(),
                         ["bob@example.org", "ivy@example.org", "joe@example.org"])
        # Cy left the group, Dan is not in it, Ada is who was active
        (notice,) = await self.web.notifier.store.notices()
        notice_id = notice.notice_id
        self.assertEqual(
            sorted(r[0] for r in self.query(
                "SELECT recipient_id FROM group_activity_recipients WHERE notice_id = %s",
                (notice_id,))),
            sorted([self.bob.id, extra["ivy"].id, extra["joe"].id]))

    @async_test
    async def test_a_session_gone_quiet_is_not_online(self):
        await self.setup_group(online_window="5m")
        await self.signed_in(self.bob)
        self.query("UPDATE web_sessions SET last_seen_at = now() - interval '6 minutes'"
                   " WHERE person_id = %s", (self.bob.id,))
        ada = await self.signed_in(self.ada)
        await self.open_page(ada)
        self.assertEqual(self.recipients(), ["bob@example.org"])

    @async_test
    async def test_nobody_to_tell_records_nothing(self):
        await self.setup_group()
        bob = await self.signed_in(self.bob)  # online
        ada = await self.signed_in(self.ada)
        await self.open_page(ada)
        self.assertEqual(self.mails(), [])
        self.assertEqual(await self.web.notifier.store.notices(), [])
        # when Bob has gone quiet, Ada's next visit tells him
        self.query("UPDATE web_sessions SET last_seen_at = now() - interval '1 hour'"
                   " WHERE person_id = %s", (self.bob.id,))
        self.query("DELETE FROM group_visits WHERE person_id = %s", (self.bob.id,))
        await self.open_page(ada)
        self.assertEqual(self.recipients(), ["bob@example.org"])
        del bob

    @async_test
    async def test_a_head_request_or_a_non_member_tells_nobody(self):
        await self.setup_group()
        ada = await self.signed_in(self.ada)
        response, _ = await ada.request("HEAD", f"/groups/{self.group_id}")
        self.assertEqual(response.code, 200)
        dan = await self.signed_in(self.dan)
        response, _ = await dan.get(f"/groups/{self.group_id}")
        self.assertEqual(response.code, 403)
        self.assertEqual(await self.web.notifier.visited(self.group_id, self.dan.id), 0)
        self.assertEqual(await self.web.notifier.visited(self.group_id, self.cy.id), 0)
        self.assertEqual(self.mails(), [])

    @async_test
    async def test_turned_off(self):
        await self.setup_group(daily_limit=0)
        ada = await self.signed_in(self.ada)
        await self.open_page(ada, times=3)
        self.assertEqual(self.mails(), [])


class WindowTests(NotifyTestCase):
    @async_test
    async def test_a_second_window_makes_a_second_mail(self):
        await self.setup_group()
        ada = await self.signed_in(self.ada)
        await self.open_page(ada, times=10)
        self.assertEqual(len(self.mails()), 1)
        self.web.notifier.clock = later(3000)  # still within the hour
        await self.open_page(ada, times=10)
        self.assertEqual(len(self.mails()), 1)
        self.web.notifier.clock = later(3700)  # the next one
        await self.open_page(ada, times=10)
        self.assertEqual(self.recipients(), ["bob@example.org", "bob@example.org"])
        self.assertEqual(len(await self.web.notifier.store.notices()), 2)

    @async_test
    async def test_each_member_and_group_has_its_own_window(self):
        await self.setup_group()
        await self.web.people.join_group(self.other_group, self.ada.id)
        await self.web.people.join_group(self.other_group, self.bob.id)
        ada = await self.signed_in(self.ada)
        await self.open_page(ada)
        await self.open_page(ada, self.other_group)
        # Dan (in the other group) hears of Ada once; Bob of Ada twice: one per group
        self.assertEqual(self.recipients(),
                         ["bob@example.org", "bob@example.org", "dan@example.org"])

    @async_test
    async def test_the_daily_limit(self):
        await self.setup_group(daily_limit=3)
        actors = []
        for i in range(5):
            actor = await self.person(f"actor{i}@example.org", f"Actor {i}")
            await self.web.people.join_group(self.group_id, actor.id)
            actors.append(actor)
        # everybody but Bob is signed in (online), so only Bob is told
        await self.signed_in(self.ada)
        browsers = [await self.signed_in(actor) for actor in actors]
        for browser in browsers:
            await self.open_page(browser, times=5)
        # he hears of three of them today
        self.assertEqual(self.recipients(), ["bob@example.org"] * 3)
        subjects = [row[5] for row in self.mails()]
        self.assertEqual(subjects, [f"Actor {i} is active in Team <A>" for i in range(3)])
        # tomorrow he may hear of them again
        self.web.notifier.clock = later(86400)
        await self.open_page(browser)
        self.assertEqual(len(self.mails()), 4)
        self.assertEqual(self.mails()[-1][5], "Actor 4 is active in Team <A>")



class FailureTests(NotifyTestCase):
    @async_test
    async def test_a_failure_to_queue_leaves_the_page_and_the_limits_alone(self):
        await self.setup_group()
        outbox = self.web.notifier.outbox
        real = outbox.enqueue_people

        async def broken(*args, **kwargs):
            raise RuntimeError("outbox is broken")

        outbox.enqueue_people = broken
        ada = await self.signed_in(self.ada)
        await self.open_page(ada)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(await self.web.notifier.store.notices(), [])
        self.assertEqual(self.query("SELECT count(*) FROM group_activity_recipients"), [(0,)])
        outbox.enqueue_people = real
        await self.open_page(ada)
        self.assertEqual(self.recipients(), ["bob@example.org"])

    @async_test
    async def test_a_refused_recipient_is_not_counted(self):
        await self.setup_group()
        # Bob's address is unusable: the outbox refuses his copy
        self.query("UPDATE people SET email = 'not an address' WHERE id = %s", (self.bob.id,))
        ada = await self.signed_in(self.ada)
        await self.open_page(ada)
        self.assertEqual(self.mails(), [])
        self.assertEqual(self.query("SELECT count(*) FROM group_activity_recipients"), [(0,)])
