"""
Headless Chromium for the end-to-end tests (Debian's chromium and
chromium-driver, installed by scripts/tools.sh; selenium from the test
extra).  A test class calls L{skip_without_chromium} in its C{setUp}.
"""

from __future__ import annotations

import shutil

from twisted.trial import unittest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

#: flags for this machine's closed network (no background connections) and
#: a root user in a container (no sandbox)
_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
          "--no-first-run", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")


def skip_without_chromium() -> None:
    """
    @raise unittest.SkipTest: Chromium, its driver or selenium is missing.
    """
    if not (CHROMIUM and CHROMEDRIVER):
        raise unittest.SkipTest("needs Debian's chromium and chromium-driver (scripts/tools.sh)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise unittest.SkipTest("needs selenium (pip install -e '.[test]')") from None


def chromium(user_data_dir: str, *, block_third_party_cookies: bool = False,
             ignore_certificate_errors: bool = False):
    """
    A selenium driver for a new headless Chromium with an empty profile in
    C{user_data_dir}.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = [*_FLAGS, f"--user-data-dir={user_data_dir}"]
    if ignore_certificate_errors:
        flags.append("--ignore-certificate-errors")
    if block_third_party_cookies:
        flags.append("--test-third-party-cookie-phaseout")
        # the user setting "block third-party cookies" (1 = block them)
        options.add_experimental_option("prefs", {"profile.cookie_controls_mode": 1,
                                                  "profile.block_third_party_cookies": True})
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    # a click that submits a form returns before the next page has loaded:
    # let lookups wait for it instead of failing on the old page
    driver.implicitly_wait(15)
    return driver


def click_for_next_page(driver, element, timeout: float = 15) -> None:
    """
    Click C{element} (a submit button, a link) and wait until the browser
    shows the next document.  The old page is marked, and the wait asks by
    script whether the mark is gone: asking about an element of a page being
    replaced can fail in chromedriver with "Node with given id does not
    belong to the document" rather than the stale-element error selenium's
    C{staleness_of} waits for, failing a test whose page did nothing wrong.
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("window.emaildPageBeforeClick = true")
    element.click()
    # errors while the documents change are asked again; the timeout is not
    WebDriverWait(driver, timeout, ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script("return window.emaildPageBeforeClick === undefined"
                                   " && document.readyState === 'complete'"))
