"""
C{[lti13.platforms.<name>]} validation and C{emaild lti} key commands.
"""

from __future__ import annotations

from twisted.trial import unittest

from emaild.config import ConfigError, load_config
from tests.cli.support import CLITestCase

GOOD = {"issuer": "https://lms.example.edu", "client_id": "c-1",
        "auth_login_url": "https://lms.example.edu/auth",
        "auth_token_url": "https://lms.example.edu/token",
        "key_set_url": "https://lms.example.edu/jwks", "deployment_ids": ["1"]}


def load(platforms, **sections):
    return load_config(None, environ={}, overrides={"lti13": {"platforms": platforms},
                                                     **sections})


class PlatformConfigTests(unittest.TestCase):
    def test_a_good_platform(self):
        config = load({"moodle": GOOD})
        platform = config.lti13_platforms["moodle"]
        self.assertEqual((platform.issuer, platform.deployment_ids, platform.course_key),
                         ("https://lms.example.edu", ("1",), "lti13:moodle"))

    def test_errors_name_the_key(self):
        cases = [
            ({"moodle": {k: v for k, v in GOOD.items() if k != "client_id"}},
             "lti13.platforms.moodle.client_id", "required"),
            ({"moodle": dict(GOOD, issuer="lms.example.edu")},
             "lti13.platforms.moodle.issuer", "URL"),
            ({"moodle": dict(GOOD, deployment_ids=[])},
             "lti13.platforms.moodle.deployment_ids", "non-empty list"),
            ({"moodle": dict(GOOD, deployment_ids="1")},
             "lti13.platforms.moodle.deployment_ids", "non-empty list"),
            ({"moodle": dict(GOOD, colour="blue")}, "lti13.platforms.moodle.colour", "unknown"),
            ({"Moodle!": GOOD}, "lti13.platforms.Moodle!", "lower-case"),
            ({"moodle": dict(GOOD, lti11_consumer_key="nope")},
             "lti13.platforms.moodle.lti11_consumer_key", "not a key of [lti.consumers]"),
            ({"a": GOOD, "b": GOOD}, "lti13.platforms.b.client_id", "same issuer"),
        ]
        for platforms, key, fragment in cases:
            with self.assertRaises(ConfigError) as caught:
                load(platforms)
            self.assertEqual(caught.exception.key, key)
            self.assertIn(fragment, caught.exception.problem)

    def test_from_a_file(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[lti13]\nstate_ttl = "5m"\n[lti13.platforms.canvas]\n'
                    + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in GOOD.items()))
        config = load_config(path, environ={})
        self.assertEqual(config["lti13"]["state_ttl"], 300.0)
        self.assertEqual(list(config.lti13_platforms), ["canvas"])


class KeyCommandTests(CLITestCase):
    def test_rotate_list_retire(self):
        result = self.cli("lti", "keys")
        self.assertEqual(result.returncode, 0, result.stderr)
        (first,) = result.stdout.split()[:1]
        result = self.cli("lti", "rotate-key")
        self.assertEqual(result.returncode, 0, result.stderr)
        second = result.stdout.split()[0]
        self.assertIn(first, result.stdout)
        self.assertEqual(self.cli("lti", "keys").stdout.splitlines(),
                         [first, f"{second}  (signing)"])
        self.assertOneLineError(self.cli("lti", "retire-key", second), 1, "signing key")
        self.assertOneLineError(self.cli("lti", "retire-key", "nope"), 1, "no key 'nope'")
        result = self.cli("lti", "retire-key", first)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(self.cli("lti", "keys").stdout.splitlines(), [f"{second}  (signing)"])
