"""
Names and Role Provisioning Services against the platform emulator: the
client-credentials token with our signed JWT assertion, a 1,000-member
roster in pages, members who left, a token endpoint that refuses, and the
weekly update reaching members who never launched.
"""

from __future__ import annotations

from twisted.internet import defer

from emaild.people.lti13_nrps import MEMBERSHIPS, STOPPED, NrpsError
from tests.lti.test_lti13 import Lti13TestCase, async_test
from tests.lti13_platform import INSTRUCTOR, LEARNER


def roster(n: int, start: int = 0) -> list[dict]:
    members = [{"status": "Active", "user_id": "lti13-user-7", "name": "Grace Hopper",
                "email": "grace@example.org", "roles": [LEARNER]}] if start == 0 else []
    for i in range(start, n - len(members) + start):
        members.append({"status": "Active", "user_id": f"member-{i}", "name": f"Member {i}",
                        "given_name": "Member", "family_name": str(i),
                        "email": f"member{i}@example.org",
                        "roles": [INSTRUCTOR if i == 3 else LEARNER]})
    return members


class NrpsTestCase(Lti13TestCase):
    async def start_nrps(self, members: list[dict], **sections):
        await self.start(**sections)
        self.platform.nrps_claim = True
        self.platform.members["ctx-physics"] = members

    async def settle(self):
        await defer.gatherResults(list(self.web.lti13.rosters.syncs))

    def course_members(self):
        return self.query("SELECT count(*) FROM course_members")[0][0]


class NrpsTests(NrpsTestCase):
    @async_test
    async def test_a_launch_syncs_a_1000_member_roster_in_pages(self):
        await self.start_nrps(roster(1000))
        self.platform.token_delay = 1.0
        self.assert_launched(*await self.launch())
        # the launch did not wait for the roster
        self.assertEqual(self.course_members(), 1)
        self.assertEqual(self.platform.token_requests, [])
        await self.settle()
        self.assertEqual(self.course_members(), 1000)
        self.assertEqual(len(self.platform.nrps_requests), 10)
        self.assertEqual({accept for _, accept in self.platform.nrps_requests}, {MEMBERSHIPS})
        (token_request,) = self.platform.token_requests
        self.assertEqual(token_request["scope"],
                         "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly")
        self.assertEqual(self.query("SELECT members, error FROM lti13_roster_syncs"),
                         [(1000, None)])
        # the launcher is one person, not two
        self.assertEqual(self.query("SELECT count(*) FROM people WHERE email = 'grace@example.org'"),
                         [(1,)])
        ((launched,),) = self.query("SELECT count(*) FROM course_members"
                                    " WHERE last_launch_at IS NOT NULL")
        self.assertEqual(launched, 1)
        self.assertIn("NRPS: course", self.logged())
        # a second launch soon after does not sync again ([lti13] nrps_interval)
        self.assert_launched(*await self.launch())
        await self.settle()
        self.assertEqual(len(self.platform.token_requests), 1)

    @async_test
    async def test_members_who_leave_are_marked_and_leave_the_course(self):
        await self.start_nrps(roster(20))
        self.platform.page_size = 7
        self.assert_launched(*await self.launch())
        await self.settle()
        self.assertEqual(self.course_members(), 20)
        members = roster(20)
        members[5]["status"] = "Inactive"
        del members[6]  # no longer listed
        self.platform.members["ctx-physics"] = members
        (course_id,) = self.query("SELECT id FROM courses")[0]
        totals = await self.web.lti13.rosters.sync_now(course_id)
        self.assertEqual(totals["left"], 2)
        self.assertEqual(self.course_members(), 18)
        left = self.query("SELECT p.email, r.status FROM lti13_roster r JOIN people p"
                          " ON p.id = r.person_id WHERE r.left_at IS NOT NULL ORDER BY p.email")
        self.assertEqual(left, [("member4@example.org", "Inactive"),
                                ("member5@example.org", "absent")])

    @async_test
    async def test_a_refusing_token_endpoint_is_recorded_and_the_launch_is_unaffected(self):
        await self.start_nrps(roster(5))
        self.platform.token_refusal = (401, {"error": "invalid_client",
                                             "error_description": "unknown key"})
        self.assert_launched(*await self.launch())
        await self.settle()
        self.assertEqual(self.course_members(), 1)
        ((error,),) = self.query("SELECT error FROM lti13_roster_syncs")
        self.assertIn("refused the access token (HTTP 401: invalid_client (unknown key))", error)
        self.assertIn("was not synced", self.logged())
        (course_id,) = self.query("SELECT id FROM courses")[0]
        with self.assertRaises(NrpsError):
            await self.web.lti13.rosters.sync_now(course_id)
        # a launch soon after does not retry; one after RETRY_AFTER does
        self.platform.token_refusal = None
        self.assert_launched(*await self.launch())
        await self.settle()
        self.assertEqual(self.course_members(), 1)
        self.query("UPDATE lti13_roster_syncs SET started_at = now() - interval '16 minutes'")
        self.assert_launched(*await self.launch())
        await self.settle()
        self.assertEqual(self.course_members(), 5)

    @async_test
    async def test_members_who_never_launched_get_the_weekly_update_and_announcements(self):
        tpl = self.tmp / "tpl" / "email"
        tpl.mkdir(parents=True)
        (tpl / "news.subject.txt").write_text("News for {{ name }}")
        (tpl / "news.txt").write_text("Hi {{ name }}, {{ body }} {{ link('/home') }}\n")
        await self.start_nrps(roster(4), templates={"dir": str(self.tmp / "tpl")})
        self.assert_launched(*await self.launch())
        await self.settle()
        (course_id,) = self.query("SELECT id FROM courses")[0]
        runner = self.hs.get_digest_runner()
        week = runner.current_week()
        await self.hs.get_digest_store().set_note(course_id, week, "Lab 2 is online.")
        await runner.run_week(week, [course_id])
        rows = self.query(
            "SELECT p.email, o.body FROM outbox o JOIN people p ON p.id = o.person_id"
            " WHERE o.template = 'digest' ORDER BY p.email")
        emails = [r[0] for r in rows]
        self.assertIn("member0@example.org", emails)  # never launched
        body = bytes(dict(rows)["member0@example.org"]).decode()
        self.assertIn(self.base + "/email/", body)  # a login link
        self.assertIn("Lab 2 is online.", body)
        # and an announcement to the course reaches every member of the roster
        label = await self.hs.get_announcements().announce("news", course_id=course_id,
                                                           context={"body": "Room change."})
        reached = self.query("SELECT p.email FROM outbox o JOIN people p ON p.id = o.person_id"
                             " WHERE o.batch = %s ORDER BY p.email", (label,))
        self.assertEqual([r[0] for r in reached],
                         ["grace@example.org", "member0@example.org", "member1@example.org",
                          "member2@example.org"])
        announcement = bytes(self.query(
            "SELECT o.body FROM outbox o JOIN people p ON p.id = o.person_id WHERE o.batch = %s"
            " AND p.email = 'member1@example.org'", (label,))[0][0]).decode()
        self.assertIn("Hi Member 1, Room change. " + self.base + "/email/", announcement)


class CourseSyncCommandTests(Lti13TestCase):
    @async_test
    async def test_emaild_course_sync(self):
        import json
        import os
        import subprocess
        import sys

        from twisted.internet import threads

        from emaild.people.lti13_keys import ToolKeys

        await self.start()
        self.platform.nrps_claim = True
        self.platform.members["ctx-physics"] = roster(30)
        state = self.tmp / "cli-state"
        keys = ToolKeys(state / "lti" / "keys")
        self.platform.tool_jwks = keys.jwks
        platform = "".join(f"{k} = {json.dumps(v)}\n"
                           for k, v in self.platform.platform_config().items())
        config = self.tmp / "emaild.toml"
        config.write_text(f"[paths]\nstate_dir = {json.dumps(str(state))}\n"
                          f"[database]\nurl = {json.dumps(self.dsn)}\npool_size = 2\n"
                          f"[lti13.platforms.emulator]\n{platform}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILD_")}

        def cli(*args):
            return threads.deferToThread(
                subprocess.run, [sys.executable, "-m", "emaild", "--config", str(config), *args],
                capture_output=True, text=True, env=env, timeout=60)

        result = await cli("course", "sync", "ctx-physics")
        self.assertEqual(result.returncode, 1)
        self.assertIn("no course 'ctx-physics'", result.stderr)
        self.platform.members["ctx-physics"] = roster(1)
        self.assert_launched(*await self.launch())
        await defer.gatherResults(list(self.web.lti13.rosters.syncs))
        self.platform.members["ctx-physics"] = roster(30)
        result = await cli("course", "sync", "ctx-physics")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("course ctx-physics: 30 members (29 new, 1 updated, 0 left) in 1 pages",
                      result.stdout)
        self.assertEqual(self.query("SELECT count(*) FROM course_members"), [(30,)])


class ShutdownTests(NrpsTestCase):
    @async_test
    async def test_stopping_cuts_a_sync_short_and_starts_no_more(self):
        from twisted.internet import reactor, task

        await self.start_nrps(roster(50))
        self.platform.token_delay = 2.0  # the sync waits for its access token
        self.assert_launched(*await self.launch())
        rosters = self.web.lti13.rosters
        (sync,) = rosters.syncs
        await task.deferLater(reactor, 0.3, lambda: None)
        self.assertFalse(sync.called)
        started = reactor.seconds()
        await rosters.stopService()
        self.assertLess(reactor.seconds() - started, 1.0)  # not the token's 2 s
        self.assertEqual(rosters.syncs, set())
        self.assertEqual(self.query("SELECT finished_at, error FROM lti13_roster_syncs"),
                         [(None, STOPPED)])
        self.assertEqual(self.course_members(), 1)  # nobody marked as having left, either
        self.assertIn(STOPPED, self.logged())
        # a launch after the stop starts no sync
        self.assertFalse(await rosters.offered("emulator", 1, self.platform.url("/nrps/x")))
        self.assertEqual(rosters.syncs, set())
        await task.deferLater(reactor, 2.0, lambda: None)  # the emulator's late answer

    def test_the_daemon_stops_the_rosters_before_the_database(self):
        from emaild.service import Emaild

        daemon = Emaild(self.config())
        children = list(daemon.database)
        self.assertIn(daemon.hs.get_rosters(), children)
        # children stop in reverse order: the rosters after the sender, with the database open
        self.assertLess(children.index(daemon.hs.get_rosters()), children.index(daemon.sender))


class LeaversLeaveTheirGroupsTests(NrpsTestCase):
    @async_test
    async def test_members_who_leave_the_course_leave_its_groups(self):
        await self.start_nrps(roster(10))
        self.platform.custom = {"group": "Team 1"}
        self.assert_launched(*await self.launch())
        await self.settle()
        (course_id,) = self.query("SELECT id FROM courses")[0]
        groups = self.hs.get_group_store()
        team = await groups.find(course_id, "Team 1")

        def person(email):
            return self.query("SELECT id FROM people WHERE email = %s", (email,))[0][0]

        stays, goes, drops = (person(f"member{i}@example.org") for i in (5, 1, 2))
        memberships = self.hs.get_memberships()
        for who in (stays, goes, drops):
            await memberships.join(team.id, course_id, who)
        # another course's group is not touched
        (other,) = self.query("INSERT INTO courses (consumer_key, context_id) VALUES"
                              " ('', 'elsewhere') RETURNING id")[0]
        await memberships.add_group("elsewhere", "Team 9")
        (other_group,) = self.query("SELECT id FROM groups WHERE course_id = %s", (other,))[0]
        await memberships.join(other_group, other, goes)

        members = roster(10)
        self.assertEqual((members[2]["user_id"], members[3]["user_id"]), ("member-1", "member-2"))
        members[2]["status"] = "Deleted"  # goes
        del members[3]  # drops: no longer listed
        self.platform.members["ctx-physics"] = members
        totals = await self.web.lti13.rosters.sync_now(course_id)
        self.assertEqual((totals["left"], totals["left_groups"]), (2, 2))
        current = {m.person_id for m in await groups.members(team.id)}
        self.assertEqual(current, {person("grace@example.org"), stays})
        left = await groups.member(team.id, goes)
        self.assertIsNotNone(left.left_at)  # their reply address no longer works
        self.assertEqual({m.person_id for m in await groups.members(other_group)}, {goes})
        # a sync with nothing new ends nothing more
        totals = await self.web.lti13.rosters.sync_now(course_id)
        self.assertEqual((totals["left"], totals["left_groups"]), (0, 0))
        self.assertIn("2 group memberships ended", self.logged())
