"""
End to end in a real headless Chromium with third-party cookies blocked:
the emulated platform's course page (http://localhost:…) frames emaild
(https://127.0.0.1:…, another site), the launch goes through the OIDC login
and the platform's postMessage storage (or, when the platform offers none,
the partitioned state cookie), and the learner lands signed in on their
home page inside the iframe.
"""

from __future__ import annotations

import urllib.parse

from twisted.internet import defer, reactor, ssl, threads
from twisted.web.server import Site

from emaild.web.app import WebApp
from tests.lti13_platform import CLIENT_ID, DEPLOYMENT_ID, ISSUER, Platform
from tests.support import DatabaseTestCase
from tests.test_browser import CHROMEDRIVER, CHROMIUM
from tests.tlsfiles import make_tls_files


def _browser(user_data_dir: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--ignore-certificate-errors", "--test-third-party-cookie-phaseout",
                 f"--user-data-dir={user_data_dir}"):
        options.add_argument(flag)
    # the user setting "block third-party cookies" (1 = block them)
    options.add_experimental_option("prefs", {"profile.cookie_controls_mode": 1,
                                              "profile.block_third_party_cookies": True})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.implicitly_wait(15)
    return driver


class Lti13BrowserTests(DatabaseTestCase):
    timeout = 180

    def setUp(self):
        from twisted.trial import unittest

        if not (CHROMIUM and CHROMEDRIVER):
            raise unittest.SkipTest("needs Debian's chromium and chromium-driver (scripts/tools.sh)")
        try:
            import selenium  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("needs selenium (pip install -e '.[test]')") from None
        return super().setUp()

    def test_launch_in_a_cross_site_iframe_through_platform_storage(self):
        return self.launch_in_iframe(storage=True)

    def test_launch_in_a_cross_site_iframe_with_the_partitioned_state_cookie(self):
        return self.launch_in_iframe(storage=False)

    @defer.inlineCallbacks
    def launch_in_iframe(self, storage: bool):
        platform = Platform(host="localhost")
        yield defer.ensureDeferred(platform.start())
        self.addCleanup(platform.stop)

        holder = {}

        class Late:
            isLeaf = True

            def render(self, request):
                return holder["resource"].render(request)

            def getChildWithDefault(self, path, request):  # noqa: N802
                return self

        tls = make_tls_files()
        options = ssl.PrivateCertificate.loadPEM(tls.localhost_pem).options()
        port = reactor.listenSSL(0, Site(Late()), options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = f"https://127.0.0.1:{port.getHost().port}"
        config = self.config(http={"public_url": base},
                             web={"lms_origins": [platform.url("")]},
                             lti13={"platforms": {"emulator": platform.platform_config()}})
        web = WebApp(reactor, config, self.db)
        holder["resource"] = web.resource()
        platform.course_login_url = base + "/lti/login?" + urllib.parse.urlencode({
            "iss": ISSUER, "login_hint": "hint-7", "target_link_uri": base + "/lti/launch",
            "client_id": CLIENT_ID, "lti_deployment_id": DEPLOYMENT_ID,
            **({"lti_storage_target": "_parent"} if storage else {})})
        profile = self.mktemp()

        def in_the_browser():
            import time

            from selenium.webdriver.common.by import By

            driver = _browser(profile)
            try:
                driver.get(platform.url("/course"))
                frame = driver.find_element(By.ID, "tool")
                driver.switch_to.frame(frame)
                deadline = time.monotonic() + 60

                def here():  # (current_url is the top page's)
                    return driver.execute_script("return location.href")

                while not here().endswith("/home") and time.monotonic() < deadline:
                    time.sleep(0.2)
                seen = {"url": here(),
                        "heading": driver.find_element(By.TAG_NAME, "h1").text,
                        "text": driver.find_element(By.TAG_NAME, "body").text,
                        "cookies": driver.get_cookies(),
                        # proof that third-party cookies are blocked here: an
                        # unpartitioned cookie does not stick, a partitioned one does
                        "probes": driver.execute_script(
                            "document.cookie = 'probe=1; SameSite=None; Secure; Path=/';"
                            "document.cookie = 'probe2=1; SameSite=None; Secure; Path=/;"
                            " Partitioned'; return document.cookie")}
                driver.switch_to.default_content()
                seen["log"] = driver.execute_script("return window.storageLog")
                return seen
            finally:
                driver.quit()

        seen = yield threads.deferToThread(in_the_browser)
        self.assertEqual(seen["url"], base + "/home", seen)
        self.assertEqual(seen["heading"], "Hello, Grace Hopper")
        self.assertNotIn("probe=1", seen["probes"])
        self.assertIn("probe2=1", seen["probes"])
        ((person,),) = self.query("SELECT person_id FROM lti13_identities")
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions WHERE person_id = %s",
                                    (person,)), [(1,)])
        if not storage:
            self.assertEqual(seen["log"], [])
            return
        # the state went through the platform's storage, not a cookie
        self.assertTrue(any(entry.startswith("lti.put_data emaild_state_") for entry in seen["log"]),
                        seen["log"])
        self.assertTrue(any(entry.startswith("lti.get_data emaild_state_") for entry in seen["log"]),
                        seen["log"])
        self.assertFalse([c for c in seen["cookies"] if c["name"].startswith("emaild_lti_state")])
