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

from tests.browser import chromium, skip_without_chromium
from tests.lti13_platform import CLIENT_ID, DEPLOYMENT_ID, ISSUER, Platform
from tests.support import DatabaseTestCase
from tests.tlsfiles import make_tls_files


class Lti13BrowserTests(DatabaseTestCase):
    timeout = 180

    def setUp(self):
        skip_without_chromium()
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
        hs = self.homeserver(config)
        hs.get_readiness().mark_ready()
        web = hs.get_web_app()
        holder["resource"] = web.resource()
        platform.course_login_url = base + "/lti/login?" + urllib.parse.urlencode({
            "iss": ISSUER, "login_hint": "hint-7", "target_link_uri": base + "/lti/launch",
            "client_id": CLIENT_ID, "lti_deployment_id": DEPLOYMENT_ID,
            **({"lti_storage_target": "_parent"} if storage else {})})
        profile = self.mktemp()

        def in_the_browser():
            import time

            from selenium.webdriver.common.by import By

            driver = chromium(profile, block_third_party_cookies=True,
                              ignore_certificate_errors=True)
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
