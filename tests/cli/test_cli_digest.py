"""
C{emaild digest}: notes, previews and sending this week's update by hand.
"""

from __future__ import annotations

import datetime

from emaild.digest import weeks
from tests.cli.support import CLITestCase


class DigestCLITests(CLITestCase):
    def setUp(self):
        d = super().setUp()
        self.cli("person", "add", "ada@example.org", "--name", "Ada", "--course", "net")
        self.cli("person", "add", "bob@example.org", "--name", "Bob", "--course", "net")
        self.cli("person", "add", "ines@example.org", "--name", "Ines", "--course", "net")
        self.query("UPDATE course_members SET roles = '{urn:lti:role:ims/lis/Instructor}'"
                   " WHERE person_id = (SELECT id FROM people WHERE email = 'ines@example.org')")
        self.week = weeks.label_of(datetime.datetime.now(datetime.timezone.utc))
        return d

    def test_note_preview_and_send_now_twice(self):
        note = self.cli("digest", "--course", "net", "--note", "Quiz on <Friday>",
                        "--week", self.week)
        self.assertEqual(note.returncode, 0, note)
        self.assertIn(f"set the note for the {self.week} update of course net", note.stdout)
        preview = self.cli("digest", "--preview", "ada@example.org", "--week", self.week)
        self.assertEqual(preview.returncode, 0, preview)
        self.assertIn(f"Subject: net: your week ({self.week})", preview.stdout)
        self.assertIn("Hello Ada,", preview.stdout)
        self.assertIn("Quiz on <Friday>", preview.stdout)
        self.assertIn("<your personal sign-in link>", preview.stdout)
        self.assertEqual(self.query("SELECT count(*) FROM outbox"), [(0,)])

        sent = self.cli("digest", "--send-now")
        self.assertEqual(sent.returncode, 0, sent)
        self.assertIn(f"{self.week} update of course net: queued 2, nothing to report 0",
                      sent.stdout)
        again = self.cli("digest", "--send-now", "--course", "net")
        self.assertEqual(again.returncode, 0, again)
        self.assertIn("already sent", again.stdout)
        self.assertEqual(self.query("SELECT recipient FROM outbox WHERE template = 'digest'"
                                    " ORDER BY 1"), [("ada@example.org",), ("bob@example.org",)])

    def test_nothing_to_report(self):
        preview = self.cli("digest", "--preview", "bob@example.org", "--course", "net",
                           "--week", self.week)
        self.assertOneLineError(preview, 1, "nothing to tell")
        sent = self.cli("digest", "--send-now")
        self.assertIn("queued 0, nothing to report 2", sent.stdout)

    def test_argument_errors(self):
        self.assertOneLineError(self.cli("digest", "--note", "x"), 2, "--course")
        self.assertOneLineError(self.cli("digest", "--preview", "ada@example.org",
                                         "--week", "2026-48"), 2, "2026-W48")
        self.assertOneLineError(self.cli("digest", "--preview", "nobody@example.org"), 1,
                                "no person")
        self.assertOneLineError(self.cli("digest", "--send-now", "--course", "nope"), 1,
                                "no course")
