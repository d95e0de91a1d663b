"""
The embedded PostgreSQL: started on demand, shared by the processes that use
it, and stopped by the last of them to leave, whoever started it (so a
server left behind by a killed daemon is adopted and stopped later).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.trial import unittest

from emaild.db.embedded import EmbeddedPostgres

#: another process using the server until its stdin closes
_OTHER_USER = """
import sys
from emaild.db.embedded import EmbeddedPostgres
server = EmbeddedPostgres(sys.argv[1])
server.start()
print("using", flush=True)
sys.stdin.read()
print("stopped" if server.release() else "left running", flush=True)
"""


class EmbeddedTests(unittest.TestCase):
    def setUp(self):
        self.root = Path(tempfile.mkdtemp(prefix="emaild-embedded-"))
        self.data = self.root / "pgdata"
        self.first = EmbeddedPostgres(self.data)
        self.addCleanup(self.first.destroy)

    def other_process(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        process = subprocess.Popen([sys.executable, "-c", _OTHER_USER, str(self.data)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                   env=env)
        self.addCleanup(lambda: process.poll() is None and process.kill())
        self.assertEqual(process.stdout.readline().strip(), "using")
        return process

    def test_stopped_by_its_last_user(self):
        self.first.start()
        self.assertTrue(self.first.started_here)
        self.assertEqual(self.first.users(), [os.getpid()])
        self.assertTrue(self.first.release())
        self.assertFalse(self.first.is_running())
        self.assertEqual(self.first.users(), [])
        # and the data survives a restart
        self.assertTrue((self.data / "PG_VERSION").exists())

    def test_not_stopped_while_another_process_uses_it(self):
        self.first.start()
        other = self.other_process()
        self.assertEqual(sorted(self.first.users()), sorted([os.getpid(), other.pid]))
        self.assertFalse(self.first.release())
        self.assertTrue(self.first.is_running())
        # the other process attached to our server, and is now its last user
        other.stdin.close()
        self.assertEqual(other.stdout.readline().strip(), "stopped")
        other.wait(30)
        self.assertFalse(self.first.is_running())

    def test_a_second_user_in_the_same_process_attaches(self):
        dsn = self.first.start()
        second = EmbeddedPostgres(self.data)
        self.assertEqual(second.start(), dsn)
        self.assertFalse(second.started_here)

    def test_a_server_left_by_a_killed_process_is_adopted_and_stopped(self):
        other = self.other_process()
        os.kill(other.pid, signal.SIGKILL)
        other.wait(30)
        self.assertTrue(self.first.is_running())  # PostgreSQL outlives its starter
        self.assertEqual(self.first.users(), [])  # a dead process is nobody
        self.first.start()
        self.assertFalse(self.first.started_here)
        self.assertTrue(self.first.release())
        self.assertFalse(self.first.is_running())

    def test_a_reused_pid_is_not_a_user(self):
        self.data.parent.mkdir(parents=True, exist_ok=True)
        # our pid, but not our start time: a dead user whose pid came back
        self.first.users_file.write_text(f"{os.getpid()} 1\n")
        self.assertEqual(self.first.users(), [])

    def test_release_without_start_does_nothing(self):
        self.assertFalse(self.first.release())
