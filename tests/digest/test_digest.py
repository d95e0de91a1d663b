"""
The weekly update: what it says, when it goes, and that nobody gets it
twice (restarts, two processes at once, --send-now while the daemon runs).
"""

from __future__ import annotations

import datetime

from twisted.internet import defer, reactor

from emaild.db.database import Database
from emaild.digest import weeks
from emaild.digest.scheduler import DigestRunner, DigestScheduler
from emaild.digest.store import DigestStore, is_staff, is_staff_role
from emaild.people.store import PeopleStore
from tests.support import DatabaseTestCase, wait_for
from tests.web.test_web_links import async_test, text_of

WEEK = "2026-W48"
SCHEDULED = weeks.scheduled_at(WEEK, "monday", 8)
#: an hour after this week's update became due
NOW = (SCHEDULED + datetime.timedelta(hours=1)).timestamp()
IN_WINDOW = SCHEDULED - datetime.timedelta(days=2)
BEFORE_WINDOW = SCHEDULED - datetime.timedelta(days=9)


class RolesTests(DatabaseTestCase):
    def test_staff_roles(self):
        for role in ("Instructor", "instructor", "Administrator",
                     "urn:lti:role:ims/lis/Instructor", "urn:lti:role:ims/lis/Administrator",
                     "urn:lti:instrole:ims/lis/Administrator",
                     "urn:lti:sysrole:ims/lis/Administrator",
                     "urn:lti:role:ims/lis/Instructor/TeachingAssistant",
                     "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor",
                     "http://purl.imsglobal.org/vocab/lis/v2/membership/Instructor#TeachingAssistant",
                     "http://purl.imsglobal.org/vocab/lis/v2/institution/person#Administrator"):
            self.assertTrue(is_staff_role(role), role)
        for role in ("Learner", "urn:lti:role:ims/lis/Learner", "Student", "",
                     "urn:lti:role:ims/lis/Learner/Instructor", "NotInstructor",
                     "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner",
                     "urn:lti:role:ims/lis/Mentor"):
            self.assertFalse(is_staff_role(role), role)
        self.assertTrue(is_staff(["Learner", "urn:lti:role:ims/lis/Instructor"]))
        self.assertFalse(is_staff([]))

    def test_weeks(self):
        self.assertEqual(weeks.scheduled_at("2026-W48", "monday", 8).isoformat(),
                         "2026-11-23T08:00:00+00:00")
        self.assertIsNone(weeks.due_week((SCHEDULED - datetime.timedelta(minutes=1)).timestamp(),
                                         "monday", 8))
        self.assertEqual(weeks.due_week(NOW, "monday", 8), WEEK)
        self.assertEqual(weeks.next_week_to_send(NOW, "monday", 8), "2026-W49")
        self.assertRaises(weeks.WeekError, weeks.parse_week, "2026-48")
        self.assertRaises(weeks.WeekError, weeks.parse_week, "2026-W60")


class DigestTestCase(DatabaseTestCase):
    pool_size = 3

    def setUp(self):
        d = super().setUp()
        self.cfg = self.config()
        self.outbox = self.homeserver(self.cfg).get_outbox()
        return d

    async def course(self, learners=2, extra_learners=0):
        """
        Course "Networks" with group "Team A" (Ada, Bob; a thread and a reply
        this week, an older thread before), group "Quiet" (Cy, nothing), an
        instructor (Ines, in Team A), and C{extra_learners} more learners in
        Team A.
        """
        people = PeopleStore(self.db)
        self.course_id = await people.ensure_course("k", "net", "Networks")
        self.team = await people.ensure_group(self.course_id, "Team A")
        self.quiet = await people.ensure_group(self.course_id, "Quiet")
        self.ada = await people.add("ada@example.org", "Ada")
        self.bob = await people.add("bob@example.org", "Bob")
        self.cy = await people.add("cy@example.org", "Cy")
        self.ines = await people.add("ines@example.org", "Ines")
        for p in (self.ada, self.bob, self.cy):
            await people.join_course(self.course_id, p.id, ["Learner"])
        await people.join_course(self.course_id, self.ines.id, ["urn:lti:role:ims/lis/Instructor"])
        for p in (self.ada, self.bob, self.ines):
            await people.join_group(self.team, p.id)
        await people.join_group(self.quiet, self.cy.id)
        self.extra = []
        for i in range(extra_learners):
            p = await people.add(f"l{i}@example.org", f"Learner {i}")
            await people.join_course(self.course_id, p.id, ["Learner"])
            await people.join_group(self.team, p.id)
            self.extra.append(p)
        # everyone joined long ago, except Bob, who joined this week
        self.query("UPDATE group_members SET joined_at = %s", (BEFORE_WINDOW,))
        self.query("UPDATE group_members SET joined_at = %s WHERE person_id = %s",
                   (IN_WINDOW, self.bob.id))
        ((old,),) = self.query(
            "INSERT INTO group_posts (group_id, author_id, message_id, subject, created_at)"
            " VALUES (%s, %s, '<old@x>', 'Old <thread>', %s) RETURNING id",
            (self.team, self.ada.id, BEFORE_WINDOW))
        self.query(
            "INSERT INTO group_posts (group_id, author_id, thread_id, message_id, subject,"
            " created_at) VALUES (%s, %s, %s, '<r1@x>', 'Re: Old', %s)",
            (self.team, self.bob.id, old, IN_WINDOW))
        self.query(
            "INSERT INTO group_posts (group_id, author_id, message_id, subject, created_at)"
            " VALUES (%s, %s, '<new@x>', 'Lab 3 & questions', %s)",
            (self.team, self.bob.id, IN_WINDOW))

    def runner(self, db=None, chunk_size=None, clock=NOW):
        """A runner on C{db} (default: the test's) at C{clock}, as the daemon builds it."""
        hs = self.homeserver(self.cfg, db)
        return DigestRunner(self.cfg, hs.get_database(), hs.get_outbox(), hs.get_digest_store(),
                            hs.get_people_store(), chunk_size=chunk_size, clock=lambda: clock)

    def digests(self):
        return self.query(
            "SELECT person_id, count(*) FROM outbox WHERE template = 'digest'"
            " GROUP BY person_id ORDER BY person_id")

    async def second_db(self):
        db = Database(reactor, self.dsn, pool_size=2)
        await db.start()
        self.addCleanup(db.close)
        return db


class RunTests(DigestTestCase):
    @async_test
    async def test_what_a_learner_gets(self):
        await self.course()
        results = await self.runner().run_week(WEEK)
        self.assertEqual(dict(results[self.course_id]), {"queued": 2, "nothing": 1})
        # Ada and Bob (Team A had activity); not Cy (quiet group), not Ines (staff)
        self.assertEqual(self.digests(), [(self.ada.id, 1), (self.bob.id, 1)])
        ((body, kind, course, qos),) = self.query(
            "SELECT body, kind, course_id, qos FROM outbox WHERE person_id = %s", (self.ada.id,))
        self.assertEqual((kind, course, qos), ("digest", self.course_id, "bulk"))
        text = text_of(body)
        self.assertIn("Hello Ada,", text)
        self.assertIn("Networks", text)
        self.assertIn("Team A", text)
        self.assertIn("1 new discussion:", text)
        self.assertIn("Lab 3 & questions", text)
        self.assertIn("1 reply in earlier discussions:", text)
        self.assertIn("Old <thread>", text)
        self.assertIn("1 new member: Bob.", text)
        self.assertIn(self.cfg["http"]["public_url"] + "/email/", text)  # the login link
        self.assertNotIn("Quiet", text)
        raw = bytes(body).decode()
        self.assertIn("List-Unsubscribe:", raw)
        self.assertIn("Lab 3 &amp; questions", raw)  # the HTML part, escaped
        bob_text = text_of(self.query("SELECT body FROM outbox WHERE person_id = %s",
                                      (self.bob.id,))[0][0])
        self.assertIn("You joined this group this week.", bob_text)
        self.assertNotIn("new member", bob_text)
        self.assertEqual(self.query("SELECT finished_at IS NOT NULL FROM digest_runs"), [(True,)])
        # again: nothing more
        self.assertEqual(await self.runner().run_week(WEEK), {})
        self.assertEqual(len(self.digests()), 2)

    @async_test
    async def test_a_note_reaches_every_learner(self):
        await self.course()
        await DigestStore(self.db).set_note(self.course_id, WEEK, "Exam on <Friday>.")
        await self.runner().run_week(WEEK)
        self.assertEqual(self.digests(), [(self.ada.id, 1), (self.bob.id, 1), (self.cy.id, 1)])
        cy = text_of(self.query("SELECT body FROM outbox WHERE person_id = %s",
                                (self.cy.id,))[0][0])
        self.assertIn("From the course team", cy)
        self.assertIn("Exam on <Friday>.", cy)
        self.assertIn("Quiet", cy)
        self.assertIn("Nothing new this week.", cy)

    @async_test
    async def test_preview_queues_nothing(self):
        await self.course()
        subject, text, html = await self.runner().preview(self.ada.id, self.course_id, WEEK)
        self.assertEqual(subject, f"Networks: your week ({WEEK})")
        self.assertIn("Lab 3 & questions", text)
        self.assertIn("<your personal sign-in link>", text)
        self.assertIn("Lab 3 &amp; questions", html)
        self.assertEqual(self.query("SELECT count(*) FROM outbox"), [(0,)])
        self.assertEqual(self.query("SELECT count(*) FROM links"), [(0,)])
        self.assertEqual(self.query("SELECT count(*) FROM digest_sent"), [(0,)])

    @async_test
    async def test_two_processes_at_once(self):
        await self.course(extra_learners=30)
        other = await self.second_db()
        first, second = self.runner(chunk_size=4), self.runner(db=other, chunk_size=4)
        await defer.gatherResults([defer.ensureDeferred(first.run_week(WEEK)),
                                   defer.ensureDeferred(second.run_week(WEEK))])
        learners = sorted([self.ada.id, self.bob.id] + [p.id for p in self.extra])
        self.assertEqual(self.digests(), [(pid, 1) for pid in learners])
        self.assertEqual(self.query(
            "SELECT outcome, count(*) FROM digest_sent GROUP BY 1 ORDER BY 1"),
            [("nothing", 1), ("queued", 32)])

    @async_test
    async def test_a_stopped_run_is_finished_later(self):
        await self.course(extra_learners=10)
        chunks = []

        def stop_after_two_chunks():  # asked once per course, then before each chunk
            chunks.append(1)
            return len(chunks) > 3

        await self.runner(chunk_size=3).run_week(WEEK, should_stop=stop_after_two_chunks)
        self.assertEqual(self.query("SELECT count(*) FROM digest_sent"), [(6,)])
        self.assertEqual(len(self.digests()), 5)  # Cy had nothing to hear about
        self.assertEqual(self.query("SELECT finished_at FROM digest_runs"), [(None,)])
        await self.runner(chunk_size=3).run_week(WEEK)
        self.assertEqual(len(self.digests()), 12)
        self.assertEqual({n for _, n in self.digests()}, {1})


class SchedulerTests(DigestTestCase):
    async def run_scheduler(self, db, clock=NOW):
        scheduler = DigestScheduler(reactor, self.runner(db, clock=clock))
        scheduler.startService()
        try:
            await wait_for(lambda: scheduler.last_week is not None or scheduler.last_error)
        finally:
            await scheduler.stopService()
        return scheduler

    @async_test
    async def test_once_across_a_restart(self):
        await self.course()
        first = await self.second_db()
        await self.run_scheduler(first)
        first.close()
        self.assertEqual(self.digests(), [(self.ada.id, 1), (self.bob.id, 1)])
        second = await self.second_db()  # the daemon again, after a restart
        scheduler = await self.run_scheduler(second)
        self.assertIsNone(scheduler.last_error)
        self.assertEqual(self.digests(), [(self.ada.id, 1), (self.bob.id, 1)])

    @async_test
    async def test_two_schedulers_at_once(self):
        await self.course(extra_learners=20)
        one, two = await self.second_db(), await self.second_db()
        s1 = DigestScheduler(reactor, self.runner(one))
        s2 = DigestScheduler(reactor, self.runner(two))
        s1.runner.chunk_size = s2.runner.chunk_size = 3
        s1.startService()
        s2.startService()
        try:
            await wait_for(lambda: s1.last_week and s2.last_week)
        finally:
            await s1.stopService()
            await s2.stopService()
        self.assertEqual(len(self.digests()), 22)
        self.assertEqual({n for _, n in self.digests()}, {1})

    @async_test
    async def test_not_before_the_hour(self):
        await self.course()
        scheduler = DigestScheduler(reactor, self.runner(
            clock=(SCHEDULED - datetime.timedelta(seconds=1)).timestamp()))
        self.assertEqual(await scheduler.run_due(), {})
        self.assertEqual(self.digests(), [])

    @async_test
    async def test_an_error_does_not_stop_the_ticks(self):
        await self.course()
        scheduler = DigestScheduler(reactor, self.runner())
        scheduler.interval = 0.05
        real = scheduler.runner.run_week
        calls = []

        async def flaky(week, **kwargs):
            calls.append(week)
            if len(calls) == 1:
                raise RuntimeError("database hiccup")
            return await real(week, **kwargs)

        scheduler.runner.run_week = flaky
        scheduler.startService()
        try:
            await wait_for(lambda: scheduler.last_week == WEEK)
        finally:
            await scheduler.stopService()
        self.assertGreaterEqual(len(calls), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.digests(), [(self.ada.id, 1), (self.bob.id, 1)])


class DaemonTests(DigestTestCase):
    async def daemon_once(self):
        from emaild.service import Emaild

        config = self.config(http={"endpoint": "tcp:0:interface=127.0.0.1"})
        daemon = Emaild(config, reactor)
        daemon.digest.runner.clock = lambda: NOW
        daemon.startService()
        try:
            await daemon.ready
            await wait_for(lambda: daemon.digest.last_week == WEEK)
        finally:
            await daemon.stopService()
        self.assertIsNone(daemon.digest.last_error)

    @async_test
    async def test_the_daemon_sends_it_once_across_a_restart(self):
        await self.course()
        await self.daemon_once()
        self.assertEqual(self.digests(), [(self.ada.id, 1), (self.bob.id, 1)])
        await self.daemon_once()  # restarted: finds the week done
        self.assertEqual(self.digests(), [(self.ada.id, 1), (self.bob.id, 1)])

    @async_test
    async def test_disabled(self):
        from emaild.service import Emaild

        await self.course()
        daemon = Emaild(self.config(http={"endpoint": "tcp:0:interface=127.0.0.1"},
                                    digest={"enabled": False}), reactor)
        daemon.digest.runner.clock = lambda: NOW
        daemon.startService()
        await daemon.ready
        self.assertFalse(daemon.digest.running)
        await daemon.stopService()
        self.assertEqual(self.digests(), [])
