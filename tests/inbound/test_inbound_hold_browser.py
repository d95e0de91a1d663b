"""
The hold -> confirm -> relayed path in a real headless Chromium: a post the
member's domain does not vouch for is held, the member opens the link from
the "Did you send this?" mail and presses "Yes, send it", and the group
gets the post.
"""

from __future__ import annotations

from twisted.internet import threads

from tests.authfixture import DaemonWithDNS
from tests.browser import chromium, click_for_next_page, skip_without_chromium


class HoldInBrowserTests(DaemonWithDNS):
    timeout = 180

    def setUp(self):
        skip_without_chromium()
        return super().setUp()

    async def test_confirming_in_the_browser_relays_the_post(self):
        await self.start()
        message_id = await self.held_post(subject="Notes from Tuesday")
        link = await self.question("carol@none.test")
        profile = self.mktemp()

        def in_the_browser():
            from selenium.webdriver.common.by import By

            driver = chromium(profile)
            try:
                driver.get(link)
                seen = {"heading": driver.find_element(By.TAG_NAME, "h1").text,
                        "details": driver.find_element(By.CSS_SELECTOR, "dl.held").text}
                click_for_next_page(driver, driver.find_element(By.CSS_SELECTOR,
                                                                "button[value=send]"))
                seen["after"] = driver.find_element(By.CSS_SELECTOR, "p.message").text
                return seen
            finally:
                driver.quit()

        seen = await threads.deferToThread(in_the_browser)
        self.assertEqual(seen["heading"], "Did you send this?")
        self.assertIn("Notes from Tuesday", seen["details"])
        self.assertIn("on its way to Study Group", seen["after"])
        self.assertEqual(await self.relayed(message_id),
                         ["ada@spf.test", "bob@dkim.test", "dan@reject.test"])

