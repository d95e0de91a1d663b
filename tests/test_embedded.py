"""
The embedded PostgreSQL: started on demand, shared, and only stopped by
whoever started it when nobody else uses it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import psycopg2
from twisted.trial import unittest

from emaild.db.embedded import EmbeddedPostgres


class EmbeddedTests(unittest.TestCase):
    def setUp(self):
        self.root = Path(tempfile.mkdtemp(prefix="emaild-embedded-"))
        self.first = EmbeddedPostgres(self.root / "pgdata")
        self.addCleanup(self.first.destroy)

    def test_second_user_attaches_and_is_not_the_one_to_stop_it(self):
        dsn = self.first.start()
        self.assertTrue(self.first.started_here)
        second = EmbeddedPostgres(self.root / "pgdata")
        self.assertEqual(second.start(), dsn)
        self.assertFalse(second.started_here)
        self.assertFalse(second.stop_if_unused())
        self.assertTrue(self.first.is_running())

    def test_not_stopped_while_someone_else_is_connected(self):
        dsn = self.first.start()
        other = psycopg2.connect(dsn)
        self.addCleanup(other.close)
        self.assertFalse(self.first.stop_if_unused())
        self.assertTrue(self.first.is_running())
        other.close()
        restarted = EmbeddedPostgres(self.root / "pgdata")
        restarted.start()  # still running: attaches
        self.assertFalse(restarted.started_here)

    def test_stopped_when_unused(self):
        self.first.start()
        self.assertTrue(self.first.stop_if_unused())
        self.assertFalse(self.first.is_running())
        # and the data survives a restart
        self.assertTrue((self.root / "pgdata" / "PG_VERSION").exists())
