"""
Test cases for the C{emaild} command: a migrated database, a config file
pointing at it, and the command run as a real subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import DatabaseTestCase

_counter = iter(range(10**9))


class CLITestCase(DatabaseTestCase):
    """
    A migrated database (C{self.dsn}), a config file pointing at it
    (C{self.config_path}) and a helper running C{python -m emaild}.
    """

    def setUp(self):
        d = super().setUp()
        self.tmp = self.tmp.absolute()
        self.config_path = self.write_config()
        return d

    def write_config(self, name="emaild.toml", extra="") -> Path:
        path = self.tmp / name
        path.write_text(
            f"[paths]\nstate_dir = {json.dumps(str(self.tmp / 'state'))}\n"
            f"[database]\nurl = {json.dumps(self.dsn)}\npool_size = 2\n{extra}",
            encoding="utf-8")
        return path

    def env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMAILD_")}
        env.update(extra)
        return env

    def command(self, args, config=True) -> list[str]:
        prefix = ["--config", str(self.config_path)] if config else []
        return [sys.executable, "-m", "emaild", *prefix, *args]

    def cli(self, *args, config=True, env=None, timeout=60) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(args, config), capture_output=True, text=True,
                              env=env or self.env(), cwd=self.tmp, timeout=timeout)

    def assertOneLineError(self, result, code, *fragments):  # noqa: N802
        self.assertEqual(result.returncode, code, result)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("emaild: "), lines[0])
        for fragment in fragments:
            self.assertIn(fragment, lines[0])
        self.assertNotIn("Traceback", result.stderr)

    def insert(self, state="queued", qos="default", n=1, reason=None, attempts=0,
               recipient=None, template="plain"):
        """
        Outbox rows straight into the table.
        """
        for _ in range(n):
            i = next(_counter)
            self.query(
                "INSERT INTO outbox (template, qos, priority, recipient, envelope_from, message_id,"
                " body, state, reason, attempts, finished_at)"
                " VALUES (%s, %s, 50, %s, %s, %s, 'x', %s, %s, %s,"
                "  CASE WHEN %s IN ('sent', 'failed') THEN now() END)",
                (template, qos, recipient or f"r{i}@example.org", f"bounces+{i}@localhost",
                 f"<{i}@localhost>", state, reason, attempts, state))

    def outbox(self):
        return self.query(
            "SELECT id, recipient, template, qos, batch, subject, state FROM outbox ORDER BY id")


class PersonCLITestCase(CLITestCase):
    def people(self):
        return self.query("SELECT id, email, display_name FROM people ORDER BY id")

    def members(self):
        return self.query(
            "SELECT c.consumer_key, c.context_id, p.email, m.roles FROM course_members m"
            " JOIN courses c ON c.id = m.course_id JOIN people p ON p.id = m.person_id"
            " ORDER BY c.id, p.id")

    def lti_course(self, consumer_key, context_id, title=""):
        ((course_id,),) = self.query(
            "INSERT INTO courses (consumer_key, context_id, title) VALUES (%s, %s, %s)"
            " RETURNING id", (consumer_key, context_id, title))
        return course_id
