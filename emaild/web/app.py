"""
The Klein application: what every route shares (config, database, pages,
sessions, links, people) and the routes that belong to no other concern
(health, static files, error pages).  Routes of a concern live in
their own module (C{routes_*.py}) and register on L{WebApp.app}.
"""

from __future__ import annotations

import functools
import json
import re

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.static import File
from werkzeug.exceptions import MethodNotAllowed, NotFound

from emaild.groups.addresses import reply_addresses
from emaild.groups.store import GroupStore
from emaild.inbound.store import InboundStore
from emaild.links.service import Links
from emaild.links.store import LinkStore
from emaild.notify.notifier import Notifier
from emaild.people.lti import LaunchVerifier, NonceStore
from emaild.people.lti13 import Lti13
from emaild.people.store import PeopleStore
from emaild.templating import static_folder
from emaild.web.pages import Pages, SecurityHeaders
from emaild.web.sessions import SessionStore, Sessions

log = Logger()

#: how long /healthz waits for the database before calling it down
HEALTH_QUERY_TIMEOUT = 2.0


_TOKEN_IN_PATH = re.compile(r"(/(?:email|unsubscribe|hold)/)[A-Za-z0-9]+")


def access_log_line(timestamp, request) -> str:
    """
    The combined-log-format access line, with link tokens (credentials:
    anyone holding one signs in as its person) replaced by C{<token>}, in
    the request path and the referrer alike.
    """
    return _TOKEN_IN_PATH.sub(r"\1<token>", http.combinedLogFormatter(timestamp, request))


def json_response(request, status: int, body) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def form_value(request, name: str) -> str:
    """
    A form field as text ('' when absent or not UTF-8): request args are bytes.
    """
    raw = (request.args.get(name.encode("ascii")) or [b""])[0]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return ""


def uncancellable(route):
    """
    Run an C{async def} route to the end even if the client goes away.

    Klein cancels a route's Deferred when the connection is lost.  Database
    calls are never cancelled (see L{emaild.db.database}), but a route with
    several steps (a sign-in: check the link, make the session, count the
    use) would stop between them; with this it completes, and Klein gets its
    CancelledError (which it ignores for a finished request).
    """

    @functools.wraps(route)
    def wrapper(*args, **kwargs):
        work = defer.ensureDeferred(route(*args, **kwargs))
        answer = defer.Deferred()

        def forward(result):
            if not answer.called:
                if isinstance(result, Failure):
                    answer.errback(result)
                else:
                    answer.callback(result)
            elif isinstance(result, Failure):
                log.failure("Error in {route} after the client went away", result,
                            route=route.__name__)

        work.addBoth(forward)
        return answer

    return wrapper



class WebApp:
    """
    @param parts: the daemon's parts, by name, each with a C{health()} that
        returns a JSON-able dict with at least C{"state"}; the database is
        checked with a real query.
    @param outbox: the outbound L{Outbox}, for pages that send mail.

    C{self.notifier} (L{Notifier}): call C{await self.notifier.visited(group_id,
    person_id)} after recording that a member is present in a group (the
    group page does; so does the API's presence endpoint).  It never raises.
    """

    app = Klein()

    def __init__(self, reactor, config, db, parts=None, outbox=None):
        self.reactor = reactor
        self.config = config
        self.db = db
        self.parts = parts or {}
        self.outbox = outbox
        self.pages = Pages(config)
        self.sessions = Sessions(config, SessionStore(db))
        self.links = Links(config, LinkStore(db))
        self.people = PeopleStore(db)
        self.groups = GroupStore(db)
        self.inbound = InboundStore(db)
        self.reply_addresses = reply_addresses(config)
        self.notifier = Notifier(config, db, outbox, clock=reactor.seconds)
        self.lti = LaunchVerifier(config, NonceStore(db, config["lti"]["timestamp_window"]),
                                  clock=reactor.seconds)
        self.lti13 = Lti13(reactor, config, db)  # LTI 1.3 (routes_lti13)
        self._static = static_folder(config["templates"]["dir"])

    def resource(self):
        return SecurityHeaders(self.app.resource(), self.config["web"]["lms_origins"])

    def site(self):
        from twisted.web.server import Site

        return Site(self.resource(), logFormatter=access_log_line)

    # -- health ------------------------------------------------------------
    async def _database_state(self) -> dict:
        d = self.db.runQuery("SELECT 1")
        d.addTimeout(HEALTH_QUERY_TIMEOUT, self.reactor)
        try:
            await d
        except defer.TimeoutError:
            return {"state": "down", "error": f"no answer within {HEALTH_QUERY_TIMEOUT}s"}
        except Exception as e:
            return {"state": "down", "error": str(e) or type(e).__name__}
        return {"state": "ok"}

    @app.route("/healthz", methods=["GET", "HEAD"])
    async def healthz(self, request):
        parts = {"database": await self._database_state()}
        for name, part in self.parts.items():
            try:
                parts[name] = part.health()
            except Exception as e:
                parts[name] = {"state": "error", "error": str(e)}
        healthy = parts["database"]["state"] == "ok"
        return json_response(request, 200 if healthy else 503,
                             {"status": "ok" if healthy else "unavailable", "parts": parts})

    @app.route("/static/", branch=True, methods=["GET", "HEAD"])
    def static(self, request):
        if self._static is None:
            return self.pages.error(request, 404, "There is no such page.")
        return File(str(self._static))

    # -- errors --------------------------------------------------------------
    @app.handle_errors(NotFound)
    def not_found(self, request, failure):
        return self.pages.error(request, 404, "There is no such page.")

    @app.handle_errors(MethodNotAllowed)
    def method_not_allowed(self, request, failure):
        return self.pages.error(request, 405, "This page does not accept that kind of request.")

    @app.handle_errors
    def server_error(self, request, failure):
        log.failure("Error serving {method} {path}", failure,
                    method=request.method, path=request.path)
        return self.pages.error(request, 500, "Something went wrong on our side; "
                                "it has been logged. Please try again later.")


# The concerns' routes register themselves on WebApp.app when imported.
from emaild.web import (routes_groups, routes_home, routes_links, routes_lti,  # noqa: E402,F401
                        routes_unsubscribe)
from emaild.web import routes_api, routes_api_announce, routes_metrics  # noqa: E402,F401
from emaild.web import routes_staff  # noqa: E402,F401
from emaild.web import routes_lti13  # noqa: E402,F401
from emaild.web import routes_holds  # noqa: E402,F401
