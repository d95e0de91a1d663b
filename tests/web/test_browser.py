"""
End to end in a real headless Chromium: a learner opens the sign-in link
from a message that the daemon wrote to its maildir outbox, lands signed in
on their home page, and turns a kind of mail off on the preferences page.
"""

from __future__ import annotations

import email
import email.policy
import re
import socket

from twisted.internet import defer, reactor, threads

from emaild.service import Emaild
from tests.browser import chromium, skip_without_chromium
from tests.support import DatabaseTestCase, wait_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrowserTests(DatabaseTestCase):
    timeout = 180

    def setUp(self):
        skip_without_chromium()
        return super().setUp()

    @defer.inlineCallbacks
    def test_magic_link_from_the_outbox_signs_in_and_a_preference_changes(self):
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        service = Emaild(self.config(
            http={"endpoint": f"tcp:{port}:interface=127.0.0.1", "public_url": base},
            relay={"poll_interval": "1s"}), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        yield service.ready

        people = service.web.people
        ada = yield defer.ensureDeferred(people.add("ada@example.org", "Ada Lovelace"))
        course = yield defer.ensureDeferred(people.ensure_course("", "physics-101", "Physics 101"))
        yield defer.ensureDeferred(people.join_course(course, ada.id, ["Learner"]))
        report = yield defer.ensureDeferred(service.outbox.enqueue_people(
            "login", [(ada.id, {"target": "/home"})], kind="login"))
        self.assertEqual(report.rejected, [])

        new = self.tmp / "outbox" / "new"
        yield wait_for(lambda: new.is_dir() and any(new.iterdir()), timeout=30)
        message = email.message_from_bytes(next(new.iterdir()).read_bytes(),
                                           policy=email.policy.default)
        text = message.get_body(("plain",)).get_content()
        (link,) = set(re.findall(re.escape(base) + r"/email/[A-Za-z0-9]+", text))

        profile = self.mktemp()

        def in_the_browser():
            from selenium.webdriver.common.by import By

            driver = chromium(profile)
            try:
                driver.get(link)
                seen = {"landed": driver.current_url,
                        "heading": driver.find_element(By.TAG_NAME, "h1").text,
                        "courses": driver.find_element(By.CSS_SELECTOR, "ul.courses").text}
                driver.find_element(By.LINK_TEXT, "Choose which emails you get").click()
                seen["preferences"] = driver.current_url
                box = driver.find_element(
                    By.XPATH, "//label[contains(., 'Announcements from the course team')]"
                              "//input[@type='checkbox']")
                seen["was_on"] = box.is_selected()
                box.click()
                driver.find_element(By.CSS_SELECTOR, "button[type=submit].primary").click()
                seen["after"] = driver.find_element(By.CSS_SELECTOR, "p.message").text
                box = driver.find_element(
                    By.XPATH, "//label[contains(., 'Announcements from the course team')]"
                              "//input[@type='checkbox']")
                seen["now_on"] = box.is_selected()
                return seen
            finally:
                driver.quit()

        seen = yield threads.deferToThread(in_the_browser)
        self.assertEqual(seen["landed"], base + "/home")
        self.assertEqual(seen["heading"], "Hello, Ada Lovelace")
        self.assertIn("Physics 101", seen["courses"])
        self.assertEqual(seen["preferences"], base + "/preferences")
        self.assertTrue(seen["was_on"])
        self.assertIn("saved", seen["after"])
        self.assertFalse(seen["now_on"])
        optouts = self.query("SELECT person_id, kind, source FROM mail_optouts")
        self.assertEqual(len(optouts), 1)
        self.assertEqual(optouts[0][:2], (ada.id, "announcement"))
