"""
The daemon process puts its start-up heap out of the cyclic garbage
collector's reach once it is ready (emaild.service.freeze_start_up_heap):
full collections no longer walk every module, template and part, which
paused every request for 50-220 ms at a time (bench/RESULTS-web.md).
"""

from __future__ import annotations

import gc

from twisted.internet import reactor
from twisted.trial import unittest

from emaild.config import load_config
from emaild.service import Emaild, build_service


class FreezeTests(unittest.TestCase):
    def setUp(self):
        gc.unfreeze()
        self.addCleanup(gc.unfreeze)  # the test process's own objects stay collectable
        self.path = self.mktemp()
        with open(self.path, "w") as f:
            f.write(f'[paths]\nstate_dir = "{self.mktemp()}"\n'
                    '[database]\nurl = "dbname=unused"\n'
                    '[http]\nendpoint = "tcp:0:interface=127.0.0.1"\n'
                    '[smtp]\nendpoint = "tcp:0:interface=127.0.0.1"\n')

    def test_the_twistd_daemon_freezes_its_heap_once_ready(self):
        daemon = build_service(self.path, reactor)
        self.assertEqual(gc.get_freeze_count(), 0, "not before it is ready")
        daemon.readiness.mark_ready()
        self.assertGreater(gc.get_freeze_count(), 1000)

    def test_a_daemon_that_stops_before_it_is_ready_freezes_nothing(self):
        daemon = build_service(self.path, reactor)
        daemon.readiness.mark_stopping()
        self.assertEqual(gc.get_freeze_count(), 0)

    def test_a_daemon_built_in_a_test_process_freezes_nothing(self):
        daemon = Emaild(load_config(self.path), reactor)
        daemon.readiness.mark_ready()
        self.assertEqual(gc.get_freeze_count(), 0)
