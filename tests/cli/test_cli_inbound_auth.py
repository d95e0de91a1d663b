"""
C{emaild inbound} shows held posts and each message's sender authentication.
"""

from __future__ import annotations

import json

from psycopg2 import Binary

from tests.cli.support import CLITestCase

RESULTS = ("relay.test; spf=softfail smtp.mailfrom=carol@none.test; spf=none smtp.helo=mx.test;"
           " dkim=none; dmarc=fail policy.published-domain-policy=none header.from=none.test")


class InboundAuthCLITests(CLITestCase):
    def test_held_rows_and_authentication_results(self):
        ((message_id,),) = self.query(
            "INSERT INTO inbound_messages (mail_from, size, raw, authentication)"
            " VALUES ('carol@none.test', 3, %s, %s) RETURNING id", (Binary(b"x\r\n"), RESULTS))
        self.query("INSERT INTO inbound_recipients (message_id, address, purpose, state)"
                   " VALUES (%s, 'group-abc@relay.test', 'relay', 'held') RETURNING id",
                   (message_id,))
        result = self.cli("inbound")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("held 1", result.stdout)
        self.assertIn("spf=softfail spf=none dkim=none dmarc=fail", result.stdout)
        result = self.cli("inbound", str(message_id))
        self.assertIn(f"Authentication-Results: {RESULTS}", result.stdout)
        result = self.cli("inbound", "--state", "held", "--json")
        (row,) = json.loads(result.stdout)["rows"]
        self.assertEqual((row["state"], row["authentication"]), ("held", RESULTS))
        self.assertEqual(json.loads(result.stdout)["counts"]["held"], 1)
