"""
Running the web app on a real loopback port against a real test database,
and a real HTTP client (treq) that keeps cookies and does not follow
redirects unless asked.
"""

from __future__ import annotations

from http.cookiejar import CookieJar

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from tests.support import DatabaseTestCase


class WebTestCase(DatabaseTestCase):
    """
    C{await self.start_web(web={...}, links={...})} serves a L{WebApp} (ready,
    unless C{ready=False}: then it answers as while the daemon starts) on
    127.0.0.1 and sets C{self.base} (its URL, also its public_url),
    C{self.web}, C{self.hs} (its L{HomeServer}) and C{self.cfg}.
    """

    async def start_web(self, ready=True, **sections):
        # public_url must name the port, which we only know after listening:
        # listen first, then build the app with the right config.
        holder = {}

        class Late:
            isLeaf = True

            def render(self, request):
                return holder["resource"].render(request)

            def getChildWithDefault(self, path, request):  # noqa: N802
                return self

        port = reactor.listenTCP(0, Site(Late()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        http = {"public_url": self.base, **sections.pop("http", {})}
        self.cfg = self.config(http=http, **sections)
        self.hs = self.homeserver(self.cfg)
        if ready:  # the database is open and migrated
            self.hs.get_readiness().mark_ready()
        self.outbox = self.hs.get_outbox()
        self.web = self.hs.get_web_app()
        holder["resource"] = self.web.resource()
        return self.base

    def client(self) -> "Browser":
        browser = Browser(self.base)
        self.addCleanup(browser.close)
        return browser


class Browser:
    """
    A cookie-keeping HTTP client, like one browser profile.  Redirects are
    not followed: tests look at them.
    """

    def __init__(self, base: str):
        self.base = base
        self.cookies = CookieJar()
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._http = HTTPClient(Agent(reactor, pool=self._pool), cookiejar=self.cookies)

    def close(self):
        return self._pool.closeCachedConnections()

    def _url(self, path: str) -> str:
        return path if path.startswith("http") else self.base + path

    async def request(self, method: str, path: str, **kwargs):
        response = await self._http.request(method, self._url(path), allow_redirects=False,
                                            **kwargs)
        return response, await response.text("utf-8")

    async def get(self, path: str, **kwargs):
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, data=None, **kwargs):
        return await self.request("POST", path, data=data, **kwargs)
