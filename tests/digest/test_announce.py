"""
Announcements: the Python API (what the CLI, the staff pages and the JSON
API call) and C{emaild announce}, against a real database.
"""

from __future__ import annotations

import json
import subprocess

from emaild.digest.announce import AnnounceError
from emaild.outbound.store import STATES
from emaild.people.store import PeopleStore
from tests.cli.support import CLITestCase
from tests.support import DatabaseTestCase
from tests.web.test_web_links import async_test, text_of

BODY = {"body": "The lab moves to room 4."}


class AnnounceTestCase(DatabaseTestCase):
    def setUp(self):
        d = super().setUp()
        tpl = self.tmp / "tpl" / "email"
        tpl.mkdir(parents=True)
        (tpl / "news.subject.txt").write_text("News for {{ name }}")
        (tpl / "news.txt").write_text(
            "Hi {{ name }}, {{ body }} Seat {{ seat | default('-') }}. {{ link('/home') }}\n")
        self.cfg = self.config(templates={"dir": str(self.tmp / "tpl")})
        hs = self.homeserver(self.cfg)
        self.outbox = hs.get_outbox()
        self.announcements = hs.get_announcements()
        return d

    async def course(self):
        people = PeopleStore(self.db)
        self.course_id = await people.ensure_course("", "net", "Networks")
        self.group = await people.ensure_group(self.course_id, "Team A")
        self.people = []
        for name in ("Ada", "Bob", "Cy", "Ines"):
            p = await people.add(f"{name.lower()}@example.org", name)
            await people.join_course(self.course_id, p.id,
                                     ["Instructor"] if name == "Ines" else ["Learner"])
            self.people.append(p)
        self.ada, self.bob, self.cy, self.ines = self.people
        await people.join_group(self.group, self.ada.id)
        await people.join_group(self.group, self.bob.id)

    def rows(self, label):
        return self.query("SELECT person_id, state, kind, course_id FROM outbox"
                          " WHERE batch = %s ORDER BY person_id", (label,))

    def counts(self, label):
        found = dict(self.query("SELECT state, count(*) FROM outbox WHERE batch = %s"
                                " GROUP BY state", (label,)))
        return {state: found.get(state, 0) for state in STATES}


class AnnounceTests(AnnounceTestCase):
    @async_test
    async def test_to_a_course(self):
        await self.course()
        label = await self.announcements.announce("announcement", course_id=self.course_id,
                               context=BODY, subject="Room change")
        self.assertTrue(label.startswith("ann-"))
        self.assertEqual(self.rows(label), [(p.id, "queued", "announcement", self.course_id)
                                            for p in self.people])
        raw = bytes(self.query("SELECT body FROM outbox WHERE person_id = %s",
                               (self.ada.id,))[0][0]).decode()
        self.assertIn("Subject: Room change", raw)
        self.assertIn("List-Unsubscribe:", raw)
        self.assertIn("You get this because you are in Networks.", text_of(raw.encode()))

    @async_test
    async def test_to_a_group_personalised_with_links(self):
        await self.course()
        await PeopleStore(self.db).join_group(self.group, self.cy.id)
        self.query("UPDATE group_members SET left_at = now() WHERE person_id = %s", (self.cy.id,))
        label = await self.announcements.announce("news", group_id=self.group, context=BODY)
        self.assertEqual([r[0] for r in self.rows(label)], [self.ada.id, self.bob.id])
        text = text_of(self.query("SELECT body FROM outbox WHERE person_id = %s",
                                  (self.bob.id,))[0][0])
        self.assertIn("Hi Bob, The lab moves to room 4. Seat -.", text)
        self.assertIn(self.cfg["http"]["public_url"] + "/email/", text)
        self.assertEqual(self.rows(label)[0][3], self.course_id)

    @async_test
    async def test_to_a_list_with_own_values(self):
        await self.course()
        result = await self.announcements.send(
            "news", recipients=[(self.ada.id, {"seat": "A1"}), (self.cy.id, {}),
                                             (self.ada.id, {"seat": "A2"}), (999999, {})],
            context=BODY)
        self.assertEqual(result.queued, 2)
        self.assertEqual([(r.index, r.person_id) for r in result.rejected],
                         [(2, self.ada.id), (3, 999999)])
        self.assertIn("Seat A1.", text_of(self.query(
            "SELECT body FROM outbox WHERE person_id = %s", (self.ada.id,))[0][0]))
        self.assertEqual((await self.announcements.progress(result.label))["rejected"], 2)

    @async_test
    async def test_bad_requests(self):
        await self.course()
        with self.assertRaises(AnnounceError):
            await self.announcements.announce("announcement", context=BODY)
        with self.assertRaises(AnnounceError):
            await self.announcements.announce("no-such-template", course_id=self.course_id)
        with self.assertRaises(AnnounceError):
            await self.announcements.announce("announcement", group_id=424242)
        with self.assertRaises(AnnounceError):
            await self.announcements.progress("nope")
        self.assertEqual(self.query("SELECT count(*) FROM outbox"), [(0,)])

    @async_test
    async def test_progress_matches_the_outbox(self):
        await self.course()
        label = await self.announcements.announce("announcement", course_id=self.course_id,
                               context=BODY, subject="s")
        other = await self.announcements.announce("announcement", group_id=self.group,
                               context=BODY, subject="s")
        self.query("UPDATE outbox SET state = 'sent' WHERE batch = %s AND person_id = %s",
                   (label, self.ada.id))
        self.query("UPDATE outbox SET state = 'failed', reason = '550 no' WHERE batch = %s"
                   " AND person_id = %s", (label, self.bob.id))
        self.query("UPDATE outbox SET state = 'suppressed' WHERE batch = %s AND person_id = %s",
                   (label, self.cy.id))
        self.query("UPDATE outbox SET state = 'sending' WHERE batch = %s AND person_id = %s",
                   (label, self.ines.id))
        counts = await self.announcements.progress(label)
        self.assertEqual({s: counts[s] for s in STATES}, self.counts(label))
        self.assertEqual(counts, {"queued": 0, "sending": 1, "sent": 1, "failed": 1,
                                  "suppressed": 1, "total": 4, "rejected": 0})
        self.assertEqual((await self.announcements.progress(other))["queued"], 2)

    @async_test
    async def test_resend_failed_touches_only_the_failed(self):
        await self.course()
        result = await self.announcements.send(
            "news", recipients=[(p.id, {"seat": f"S{p.id}"}) for p in self.people],
            context=BODY)
        label = result.label
        self.query("UPDATE outbox SET state = 'sent' WHERE batch = %s AND person_id = %s",
                   (label, self.ada.id))
        self.query("UPDATE outbox SET state = 'failed', reason = '550 5.1.1 gone', attempts = 1"
                   " WHERE batch = %s AND person_id IN (%s, %s)", (label, self.bob.id, self.cy.id))
        self.query("UPDATE outbox SET state = 'suppressed' WHERE batch = %s AND person_id = %s",
                   (label, self.ines.id))
        before = self.query("SELECT id, state, reason FROM outbox ORDER BY id")
        again = await self.announcements.resend_failed(label)
        self.assertEqual(again.label, f"{label}-resend1")
        self.assertEqual(again.queued, 2)
        # the old rows are untouched: the failures stay visible
        self.assertEqual(self.query("SELECT id, state, reason FROM outbox WHERE batch = %s"
                                    " ORDER BY id", (label,)), before)
        self.assertEqual(self.rows(again.label), [(self.bob.id, "queued", "announcement", None),
                                                  (self.cy.id, "queued", "announcement", None)])
        self.assertIn(f"Seat S{self.bob.id}.", text_of(self.query(
            "SELECT body FROM outbox WHERE batch = %s AND person_id = %s",
            (again.label, self.bob.id))[0][0]))
        # while the re-send is under way there is nothing more to re-send
        with self.assertRaises(AnnounceError):
            await self.announcements.resend_failed(label)
        # Cy fails again: only Cy, in a second re-send
        self.query("UPDATE outbox SET state = 'failed' WHERE batch = %s AND person_id = %s",
                   (again.label, self.cy.id))
        self.query("UPDATE outbox SET state = 'sent' WHERE batch = %s AND person_id = %s",
                   (again.label, self.bob.id))
        third = await self.announcements.resend_failed(label)
        self.assertEqual(third.label, f"{label}-resend2")
        self.assertEqual([r[0] for r in self.rows(third.label)], [self.cy.id])
        report = await self.announcements.status(label)
        self.assertEqual(report["resends"], [again.label, third.label])
        self.assertEqual(sorted(f["person_id"] for f in report["failures"]),
                         [self.bob.id, self.cy.id])
        self.assertEqual(report["failures"][0]["reason"], "550 5.1.1 gone")


class AnnounceCLITests(CLITestCase):
    def setUp(self):
        d = super().setUp()
        self.cli("person", "add", "ada@example.org", "--name", "Ada", "--course", "net")
        self.cli("person", "add", "bob@example.org", "--name", "Bob", "--course", "net")
        self.cli("group", "add", "--course", "net", "Team A")
        self.cli("group", "join", "net/Team A", "ada@example.org")
        return d

    def test_announce_status_and_resend(self):
        result = self.cli("announce", "--template", "announcement", "--course", "net",
                          "--subject", "Hello", "--context", json.dumps(BODY), "--no-wait")
        self.assertEqual(result.returncode, 0, result)
        label = result.stdout.strip()
        self.assertTrue(label.startswith("ann-"), result.stdout)
        self.assertIn("queued 2 messages, rejected 0", result.stderr)
        self.assertEqual(self.query("SELECT count(*) FROM outbox WHERE batch = %s", (label,)),
                         [(2,)])
        self.query("UPDATE outbox SET state = 'failed', reason = '550 5.1.1 no such user'"
                   " WHERE recipient = 'bob@example.org'")
        self.query("UPDATE outbox SET state = 'sent' WHERE recipient = 'ada@example.org'")
        shown = self.cli("announce", "--status", label)
        self.assertEqual(shown.returncode, 0, shown)
        self.assertIn("queued 0, sending 0, sent 1, failed 1, suppressed 0, total 2", shown.stdout)
        self.assertIn("bob@example.org", shown.stdout)
        self.assertIn("550 5.1.1 no such user", shown.stdout)
        as_json = json.loads(self.cli("announce", "--status", label, "--json").stdout)
        self.assertEqual(as_json["counts"]["failed"], 1)
        again = self.cli("announce", "--resend-failed", label, "--no-wait")
        self.assertEqual(again.returncode, 0, again)
        self.assertEqual(again.stdout.strip(), f"{label}-resend1")
        self.assertEqual(self.query("SELECT recipient, state FROM outbox WHERE batch = %s",
                                    (f"{label}-resend1",)), [("bob@example.org", "queued")])
        nothing = self.cli("announce", "--resend-failed", label, "--no-wait")
        self.assertOneLineError(nothing, 1, "no failed recipients")

    def test_group_to_and_people(self):
        group = self.cli("announce", "--template", "announcement", "--group", "net/Team A",
                         "--subject", "s", "--context", json.dumps(BODY), "--no-wait")
        self.assertEqual(group.returncode, 0, group)
        self.assertEqual(self.query("SELECT recipient FROM outbox WHERE batch = %s",
                                    (group.stdout.strip(),)), [("ada@example.org",)])
        to = self.cli("announce", "--template", "announcement", "--to", "bob@example.org",
                      "--to", "nobody@example.org", "--subject", "s",
                      "--context", json.dumps(BODY), "--no-wait")
        self.assertEqual(to.returncode, 1, to)
        self.assertIn("nobody@example.org: no person with this address", to.stderr)
        self.assertEqual(self.query("SELECT recipient FROM outbox WHERE batch = %s",
                                    (to.stdout.strip(),)), [("bob@example.org",)])
        csv = self.tmp / "people.csv"
        csv.write_text("email,body\nada@example.org,Your seat is A1\nbob@example.org,B2\n")
        people = self.cli("announce", "--template", "announcement", "--people", str(csv),
                          "--subject", "Seats", "--no-wait")
        self.assertEqual(people.returncode, 0, people)
        bodies = self.query("SELECT recipient, body FROM outbox WHERE batch = %s ORDER BY 1",
                            (people.stdout.strip(),))
        self.assertIn("Your seat is A1", text_of(bodies[0][1]))
        self.assertIn("B2", text_of(bodies[1][1]))

    def test_progress_bar_until_done(self):
        proc = subprocess.Popen(
            self.command(["announce", "--template", "announcement", "--course", "net",
                          "--subject", "s", "--context", json.dumps(BODY), "--interval", "0.1"]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env(),
            cwd=self.tmp)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        label = proc.stdout.readline().strip()
        first = proc.stdout.readline()
        self.assertIn("0/2", first)
        self.assertIn("queued 2", first)
        self.query("UPDATE outbox SET state = 'sent' WHERE batch = %s AND recipient LIKE 'a%%'",
                   (label,))
        self.query("UPDATE outbox SET state = 'failed' WHERE batch = %s AND recipient LIKE 'b%%'",
                   (label,))
        out, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 0, err)
        self.assertEqual(out.strip().splitlines()[-1],
                         "queue drained: queued 0, sending 0, sent 1, failed 1, suppressed 0 "
                         "(total 2)")

    def test_argument_errors(self):
        self.assertOneLineError(self.cli("announce", "--course", "net"), 2, "--template")
        self.assertOneLineError(self.cli("announce", "--template", "announcement"), 2,
                                "say whom")
        self.assertOneLineError(self.cli("announce", "--template", "nope", "--course", "net"),
                                1, "nope")
        self.assertOneLineError(self.cli("announce", "--status", "ann-nope"), 1,
                                "no announcement")
        self.assertOneLineError(self.cli("announce", "--template", "announcement",
                                         "--course", "nosuch"), 1, "no course")
