"""
Configuration: defaults, the TOML file, environment overrides, and errors
that name the key.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial import unittest

from emaild.config import QOS_SCHEMA, SCHEMA, ConfigError, load_config, parse_duration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


class ConfigTests(unittest.TestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        Path(path).write_text(text)
        return path

    def error(self, text: str = "", environ=None) -> ConfigError:
        path = self.write(text) if text else None
        with self.assertRaises(ConfigError) as caught:
            load_config(path, environ=environ or {})
        return caught.exception

    def test_defaults_are_a_complete_single_machine_setup(self):
        config = load_config(None, environ={})
        self.assertEqual(config["paths"]["state_dir"], "./var")
        self.assertEqual(config["database"]["url"], "")
        self.assertEqual(config["http"]["endpoint"], "tcp:8080:interface=127.0.0.1")
        self.assertEqual(config["smtp"]["endpoint"], "tcp:2525:interface=127.0.0.1")
        self.assertEqual(config["relay"]["transport"], "maildir")
        self.assertEqual(config.from_address, "noreply@localhost")
        self.assertEqual(config.qos_class(None).name, "default")
        self.assertEqual(config.qos_class("removed-since").name, "default")

    def test_burst_defaults_to_half_the_rate(self):
        self.assertEqual(load_config(None, environ={})["relay"]["burst"], 7.0)
        self.assertEqual(load_config(self.write("[relay]\nrate = 50\n"), environ={})
                         ["relay"]["burst"], 25.0)
        self.assertEqual(load_config(self.write("[relay]\nrate = 0.5\n"), environ={})
                         ["relay"]["burst"], 1.0)  # at least one recipient
        self.assertEqual(load_config(self.write("[relay]\nrate = 50\nburst = 3\n"), environ={})
                         ["relay"]["burst"], 3.0)
        self.assertEqual(load_config(None, environ={"EMAILD_RELAY_BURST": "4"})
                         ["relay"]["burst"], 4.0)

    def test_file_values_are_typed(self):
        config = load_config(self.write(
            '[relay]\nrate = 2\nlease = "90s"\n[qos.bulk]\nbackoff = ["1m", "1h"]\nrate = 0.5\n'
            '[qos.digest]\npriority = 20\n'), environ={})
        self.assertEqual(config["relay"]["rate"], 2.0)
        self.assertEqual(config["relay"]["lease"], 90.0)
        self.assertEqual(config.qos["bulk"].backoff, (60.0, 3600.0))
        self.assertEqual(config.qos["bulk"].priority, 10)  # built-in kept
        self.assertEqual(config.qos["digest"].priority, 20)
        self.assertEqual(config.qos["digest"].delay_after(1), 30.0)
        self.assertEqual(config.qos["bulk"].delay_after(7), 3600.0)  # the last repeats

    def test_environment_overrides_the_file(self):
        path = self.write('[relay]\npassword = "from-file"\n')
        config = load_config(path, environ={
            "EMAILD_RELAY_PASSWORD": "s3cret", "EMAILD_QOS_BULK_MAX_ATTEMPTS": "3",
            "EMAILD_CONFIG": "ignored", "EMAILD_TEST_DATABASE_URL": "ignored"})
        self.assertEqual(config["relay"]["password"], "s3cret")
        self.assertEqual(config.qos["bulk"].max_attempts, 3)

    def test_unknown_key_is_named(self):
        e = self.error("[relay]\nrat = 3\n")
        self.assertEqual(e.key, "relay.rat")
        self.assertIn("unknown key", str(e))

    def test_unknown_section_is_named(self):
        self.assertEqual(self.error("[rely]\nrate = 3\n").key, "rely")

    def test_bad_values_are_named_with_the_problem(self):
        cases = {
            '[relay]\nrate = "fast"\n': ("relay.rate", "expected a number"),
            "[relay]\nrate = 0\n": ("relay.rate", "greater than 0"),
            '[relay]\ntransport = "carrier-pigeon"\n': ("relay.transport", "maildir, smtp"),
            '[relay]\nlease = "soon"\n': ("relay.lease", "duration"),
            '[http]\nendpoint = "8080"\n': ("http.endpoint", "endpoint string"),
            '[http]\npublic_url = "javascript:alert(1)"\n': ("http.public_url", "URL"),
            '[qos.bulk]\nbackoff = []\n': ("qos.bulk.backoff", "non-empty list"),
            '[qos.bulk]\nspeed = 1\n': ("qos.bulk.speed", "unknown key"),
            '[relay]\ntls = "none"\nusername = "u"\ntransport = "smtp"\n': ("relay.tls", "in clear"),
        }
        for text, (key, words) in cases.items():
            e = self.error(text)
            self.assertEqual(e.key, key, text)
            self.assertIn(words, str(e), text)

    def test_bad_environment_override_is_named(self):
        self.assertEqual(self.error(environ={"EMAILD_RELAY_RATE": "x"}).key, "relay.rate")
        self.assertEqual(self.error(environ={"EMAILD_RELAY_SPEED": "1"}).key, "EMAILD_RELAY_SPEED")

    def test_missing_and_broken_files(self):
        with self.assertRaises(ConfigError) as caught:
            load_config("/nonexistent/emaild.toml", environ={})
        self.assertIn("does not exist", str(caught.exception))
        self.assertIn("not valid TOML", str(self.error("[relay\n")))

    def test_durations(self):
        self.assertEqual(parse_duration("250ms"), 0.25)
        self.assertEqual(parse_duration("2d"), 172800)
        self.assertEqual(parse_duration(5), 5.0)
        self.assertRaises(ValueError, parse_duration, "-1s")
        self.assertRaises(ValueError, parse_duration, True)

    def test_every_key_is_documented(self):
        docs = DOCS.read_text()
        for section, keys in SCHEMA.items():
            self.assertIn(f"[{section}]", docs)
            for key in keys:
                self.assertIn(f"| `{key}` |", docs, f"{section}.{key} is not in {DOCS.name}")
        for key in QOS_SCHEMA:
            self.assertIn(f"| `{key}` |", docs)
