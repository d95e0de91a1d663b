"""
C{emaild inbound}: looking up received mail and its outcome.
"""

from __future__ import annotations

import json

from psycopg2 import Binary

from tests.cli.support import CLITestCase


class InboundCLITests(CLITestCase):
    def store(self, mail_from, address, purpose, state, reason):
        ((message_id,),) = self.query(
            "INSERT INTO inbound_messages (mail_from, size, raw) VALUES (%s, 3, %s) RETURNING id",
            (mail_from, Binary(b"x\r\n")))
        self.query("INSERT INTO inbound_recipients (message_id, address, purpose, state, reason)"
                   " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                   (message_id, address, purpose, state, reason))
        return message_id

    def test_counts_reasons_and_one_message(self):
        done = self.store("ada@example.org", "group-abc@relay.test", "relay", "done",
                          "relayed as post 1 to 2 members")
        self.store("ada@example.org", "group-abc@relay.test", "relay", "ignored",
                   "not relayed: Auto-Submitted: auto-replied")
        self.store("", "bounces+1@relay.test", "bounce", "received", None)

        result = self.cli("inbound")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("received 1  done 1  ignored 1  failed 0", result.stdout)
        self.assertIn("not relayed: Auto-Submitted: auto-replied", result.stdout)
        self.assertNotIn("relayed as post", result.stdout)

        result = self.cli("inbound", str(done), "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        (row,) = json.loads(result.stdout)["rows"]
        self.assertEqual((row["message"], row["state"], row["reason"]),
                         (done, "done", "relayed as post 1 to 2 members"))

        result = self.cli("inbound", "--state", "received")
        self.assertIn("<>", result.stdout)

    def test_unknown_message_and_bad_arguments(self):
        result = self.cli("inbound", "999")
        self.assertEqual(result.returncode, 1)
        self.assertIn("no received message 999", result.stderr)
        self.assertEqual(self.cli("inbound", "--state", "lost").returncode, 2)
        self.assertEqual(self.cli("inbound", "--limit", "0").returncode, 1)

    def test_refusals_before_storing_are_shown(self):
        self.query("INSERT INTO inbound_refusals (reason, subject, hour, address, mail_from,"
                   " reply, attempts) VALUES ('rate', 'group 1 person 2', date_trunc('hour',"
                   " now()), 'group-abc@relay.test', 'ada@example.org', %s, 4)",
                   ("450 4.7.1 too many posts from this member in the last hour",))
        result = self.cli("inbound")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("refused before storing:", result.stdout)
        self.assertIn("450 4.7.1 too many posts", result.stdout)
        (refusal,) = json.loads(self.cli("inbound", "--json").stdout)["refusals"]
        self.assertEqual((refusal["reason"], refusal["address"], refusal["attempts"]),
                         ("rate", "group-abc@relay.test", 4))
