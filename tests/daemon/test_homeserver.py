"""
The composition root builds each part once and every part that needs
another gets that same one: one Links, one outbox store, one metrics
registry in the whole process.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial import unittest

from emaild.homeserver import HomeServer, built_once
from tests.support import make_config


class HomeServerTests(unittest.TestCase):
    def setUp(self):
        # nothing connects: building parts never touches the database
        self.hs = HomeServer(make_config(self.mktemp(), "dbname=unused"), reactor)

    def test_each_part_is_built_once(self):
        for name in ("get_database", "get_outbox_store", "get_links", "get_outbox",
                     "get_notifier", "get_metrics", "get_sender", "get_web_app"):
            self.assertIs(getattr(self.hs, name)(), getattr(self.hs, name)(), name)

    def test_one_links_for_the_whole_process(self):
        hs = self.hs
        links = hs.get_links()
        self.assertIs(hs.get_outbox().links, links)
        self.assertIs(hs.get_composer().links, links)
        self.assertIs(hs.get_web_app().links, links)
        self.assertIs(hs.get_inbound_handler().links, links)
        self.assertIs(hs.get_relay_processor().links, links)

    def test_parts_share_their_stores_and_metrics(self):
        hs = self.hs
        store = hs.get_outbox_store()
        self.assertIs(hs.get_outbox().store, store)
        self.assertIs(hs.get_sender().store, store)
        self.assertIs(hs.get_web_app().outbox.store, store)
        self.assertIs(hs.get_sender().metrics, hs.get_metrics())
        self.assertIs(hs.get_web_app().metrics, hs.get_metrics())
        self.assertIs(hs.get_notifier().people, hs.get_people_store())
        self.assertIs(hs.get_announcements().store, hs.get_digest_runner().store)

    def test_a_configured_database_means_no_embedded_server(self):
        self.assertIsNone(self.hs.get_embedded_postgres())
        embedded = HomeServer(make_config(self.mktemp(), ""), reactor)
        self.assertIsNotNone(embedded.get_embedded_postgres())

    def test_a_part_that_needs_itself_is_an_error(self):
        class Looping(HomeServer):
            @built_once
            def get_loop(self):
                return self.get_loop()

        with self.assertRaises(RuntimeError) as raised:
            Looping(self.hs.config, reactor).get_loop()
        self.assertIn("get_loop depends on itself", str(raised.exception))
