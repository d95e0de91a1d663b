"""
L{emaild.cli.runtime}: the parts a command gets, and Ctrl-C.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import defer, task
from twisted.trial import unittest

from emaild.cli.output import CliError, Interrupted
from emaild.cli.runtime import CommandParts, Interruption
from tests.support import make_config


class CommandPartsTests(unittest.TestCase):
    def parts(self, **sections):
        tmp = Path(self.mktemp())
        tmp.mkdir()
        return CommandParts(make_config(tmp, "postgresql:///unused", **sections), task.Clock())

    def test_each_part_is_built_once_and_shared(self):
        parts = self.parts()
        for name in ("get_outbox_store", "get_outbox", "get_composer", "get_people_store",
                     "get_group_store", "get_memberships", "get_reply_addresses",
                     "get_inbound_store", "get_digest_store", "get_digest_runner"):
            self.assertIs(getattr(parts, name)(), getattr(parts, name)(), name)
        outbox = parts.get_outbox()
        self.assertIs(outbox.store, parts.get_outbox_store())
        self.assertIs(outbox.composer, parts.get_composer())
        self.assertIs(parts.get_digest_runner().outbox, outbox)
        for store in (parts.get_outbox_store(), parts.get_people_store(),
                      parts.get_inbound_store()):
            self.assertIs(store.db, parts.get_database())
        self.assertIsNone(parts.embedded)

    def test_a_missing_template_folder_is_a_configuration_error(self):
        parts = self.parts(templates={"dir": "/nonexistent/emaild-templates"})
        with self.assertRaises(CliError) as e:
            parts.get_outbox()
        self.assertEqual(e.exception.code, 2)
        self.assertIn("templates.dir", e.exception.message)

    def test_no_url_means_the_embedded_server_of_the_state_directory(self):
        tmp = Path(self.mktemp())
        tmp.mkdir()
        parts = CommandParts(make_config(tmp), task.Clock())
        self.assertEqual(parts.embedded.data_dir, tmp.absolute() / "postgres")


class InterruptionTests(unittest.TestCase):
    def test_ctrl_c_ends_a_sleep_at_once_and_raises_at_the_next_check(self):
        clock = task.Clock()
        interruption = Interruption(clock)
        interruption.check()  # nothing requested yet
        d = defer.ensureDeferred(interruption.sleep(60))
        clock.advance(1)
        self.assertNoResult(d)
        interruption.request()
        self.failureResultOf(d, Interrupted)
        self.assertRaises(Interrupted, interruption.check)
