"""
C{emaild person list} shows LTI 1.3 identities beside the LTI 1.1 ones.
"""

from __future__ import annotations

import json

from tests.cli.support import PersonCLITestCase

PLATFORM = """
[lti13.platforms.canvas]
issuer = "https://canvas.example"
client_id = "10000000000001"
auth_login_url = "https://canvas.example/api/lti/authorize_redirect"
auth_token_url = "https://canvas.example/login/oauth2/token"
key_set_url = "https://canvas.example/api/lti/security/jwks"
deployment_ids = ["1:abc"]
"""


class PersonListTests(PersonCLITestCase):
    def setUp(self):
        d = super().setUp()
        self.config_path = self.write_config(extra=PLATFORM)
        return d

    def test_lti13_identities_are_listed(self):
        self.assertEqual(self.cli("person", "add", "ada@example.org", "--name", "Ada").returncode,
                         0)
        self.assertEqual(self.cli("person", "add", "bob@example.org").returncode, 0)
        ada, bob = (row[0] for row in self.people())
        self.query("INSERT INTO lti_identities (consumer_key, user_id, person_id)"
                   " VALUES ('moodle', 'u-1', %s)", (ada,))
        self.query("INSERT INTO lti13_identities (issuer, sub, person_id) VALUES"
                   " ('https://canvas.example', 'c-7', %s),"
                   " ('https://gone.example', 'g-1', %s)", (ada, bob))
        result = self.cli("person", "list")
        self.assertEqual(result.returncode, 0, result)
        lines = result.stdout.splitlines()
        self.assertIn("  moodle, lti13:canvas  ", lines[1])
        # an issuer no platform has now is shown as itself
        self.assertIn("  lti13:https://gone.example  ", lines[2])
        people = json.loads(self.cli("person", "list", "--json").stdout)
        self.assertEqual(people[0]["identities"], [
            {"consumer_key": "moodle", "user_id": "u-1"},
            {"issuer": "https://canvas.example", "sub": "c-7", "platform": "canvas"}])
        self.assertEqual(people[1]["identities"], [
            {"issuer": "https://gone.example", "sub": "g-1", "platform": None}])
