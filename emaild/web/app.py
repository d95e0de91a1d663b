"""
The Klein application: what every route shares (config, database, pages,
sessions, links, people, all taken from the L{HomeServer}) and the routes
that belong to no other concern (health, static files, error pages).

Routes of a concern live in their own module (C{routes_*.py}); each collects
its routes on a L{emaild.web.routing.Routes} table and exposes
C{register(web)}, and L{ROUTE_MODULES} lists them: adding a concern is one
line there.  Route modules never import this one.

Until the daemon is ready (database open and migrated, every part running)
L{StartingGate} answers every route but C{/healthz} and C{/static/} with 503
and C{Retry-After}: an HTML page, or JSON under C{/api/} and at C{/metrics}.
"""

from __future__ import annotations

import re

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.static import File
from werkzeug.exceptions import MethodNotAllowed, NotFound

from emaild.readiness import STOPPING
from emaild.templating import static_folder
from emaild.web import (
    routes_api,
    routes_api_announce,
    routes_groups,
    routes_holds,
    routes_home,
    routes_links,
    routes_lti,
    routes_lti13,
    routes_metrics,
    routes_staff,
    routes_unsubscribe,
)
from emaild.web.pages import Pages, SecurityHeaders
from emaild.web.responses import form_value, json_response
from emaild.web.routing import uncancellable

__all__ = ["ROUTE_MODULES", "WebApp", "access_log_line", "form_value", "json_response",
           "uncancellable"]

log = Logger()

#: every module whose routes the app serves (each has register(web))
ROUTE_MODULES = (
    routes_home,
    routes_links,
    routes_unsubscribe,
    routes_lti,
    routes_lti13,
    routes_groups,
    routes_staff,
    routes_api,
    routes_api_announce,
    routes_metrics,
    routes_holds,
)

#: how long /healthz waits for the database before calling it down
HEALTH_QUERY_TIMEOUT = 2.0

#: paths served while the daemon starts (they need no database)
_ALWAYS_SERVED = (b"/healthz", b"/static/")
#: paths whose errors are JSON, not pages
_JSON_PATHS = (b"/api/", b"/metrics")


_TOKEN_IN_PATH = re.compile(r"(/(?:email|unsubscribe|hold)/)[A-Za-z0-9]+")


def access_log_line(timestamp, request) -> str:
    """
    The combined-log-format access line, with link tokens (credentials:
    anyone holding one signs in as its person) replaced by C{<token>}, in
    the request path and the referrer alike.
    """
    return _TOKEN_IN_PATH.sub(_redacted, http.combinedLogFormatter(timestamp, request))


def _redacted(match: re.Match) -> str:
    # a function, not the template r"\1<token>": re expands a template in
    # Python on every match, at twice the cost (one per click)
    return match[1] + "<token>"


class StartingGate(Resource):
    """
    Serves the app only once the process is ready; until then (and while it
    stops) a 503 with C{Retry-After} in the route's own language.
    """

    isLeaf = True

    def __init__(self, inner: Resource, readiness, pages: Pages):
        super().__init__()
        self.inner = inner
        self.readiness = readiness
        self.pages = pages

    def render(self, request):
        path = request.path
        if self.readiness.is_ready() or path == _ALWAYS_SERVED[0] or path.startswith(
                _ALWAYS_SERVED[1]):
            return self.inner.render(request)
        request.setHeader(b"Retry-After", str(self.readiness.retry_after).encode("ascii"))
        doing = "stopping" if self.readiness.state == STOPPING else "starting"
        if path == b"/api" or path.startswith(_JSON_PATHS):
            return json_response(request, 503, {
                "error": f"emaild is {doing}; try again in a few seconds",
                "status": self.readiness.state})
        return self.pages.error(request, 503, f"This site is {doing}. "
                                "Please try again in a few seconds.")


class WebApp:
    """
    The web part of one L{emaild.homeserver.HomeServer}.

    @param parts: the daemon's parts, by name, each with a C{health()} that
        returns a JSON-able dict with at least C{"state"}; the database is
        checked with a real query.

    C{self.notifier} (L{emaild.notify.notifier.Notifier}): call C{await
    self.notifier.visited(group_id, person_id)} after recording that a
    member is present in a group (the group page does; so does the API's
    presence endpoint).  It never raises.
    """

    def __init__(self, hs, parts=None):
        self.hs = hs
        self.reactor = hs.get_reactor()
        self.config = config = hs.get_config()
        self.db = hs.get_database()
        self.readiness = hs.get_readiness()
        self.parts = parts if parts is not None else {}
        self.outbox = hs.get_outbox()
        self.metrics = hs.get_metrics()
        self.pages = Pages(config)
        self.sessions = hs.get_sessions()
        self.links = hs.get_links()
        self.people = hs.get_people_store()
        self.groups = hs.get_group_store()
        self.inbound = hs.get_inbound_store()
        self.reply_addresses = hs.get_reply_addresses()
        self.notifier = hs.get_notifier()
        self.lti = hs.get_launch_verifier()
        self.announcements = hs.get_announcements()
        self.lti13 = hs.get_lti13()
        self._static = static_folder(config["templates"]["dir"])
        self.klein = Klein()
        self.klein.route("/healthz", methods=["GET", "HEAD"])(self.healthz)
        self.klein.route("/static/", branch=True, methods=["GET", "HEAD"])(self.static)
        self.klein.handle_errors(NotFound)(self.not_found)
        self.klein.handle_errors(MethodNotAllowed)(self.method_not_allowed)
        self.klein.handle_errors(self.server_error)
        for module in ROUTE_MODULES:
            module.register(self)

    def resource(self):
        # a click on a login link skips Klein's routing (the hottest request)
        routes: Resource = routes_links.LoginLinkFastPath(self, self.klein.resource())
        routes = routes_lti13.LoginFastPath(self, routes)  # half of every LTI 1.3 launch
        return SecurityHeaders(StartingGate(routes, self.readiness, self.pages),
                               self.config["web"]["lms_origins"])

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

    def _part_states(self) -> dict:
        parts = {}
        for name, part in self.parts.items():
            try:
                parts[name] = part.health()
            except Exception as e:
                parts[name] = {"state": "error", "error": str(e)}
        return parts

    async def healthz(self, request):
        if not self.readiness.is_ready():
            # the database may not exist yet: do not ask it
            request.setHeader(b"Retry-After", str(self.readiness.retry_after).encode("ascii"))
            parts = {"database": {"state": self.readiness.state}, **self._part_states()}
            return json_response(request, 503, {"status": self.readiness.state,
                                                "step": self.readiness.step, "parts": parts})
        parts = {"database": await self._database_state(), **self._part_states()}
        healthy = parts["database"]["state"] == "ok"
        return json_response(request, 200 if healthy else 503,
                             {"status": "ok" if healthy else "unavailable", "parts": parts})

    def static(self, request):
        if self._static is None:
            return self.pages.error(request, 404, "There is no such page.")
        return File(str(self._static))

    # -- errors --------------------------------------------------------------
    def not_found(self, request, failure):
        return self.pages.error(request, 404, "There is no such page.")

    def method_not_allowed(self, request, failure):
        return self.pages.error(request, 405, "This page does not accept that kind of request.")

    def server_error(self, request, failure):
        log.failure("Error serving {method} {path}", failure,
                    method=request.method, path=request.path)
        return self.pages.error(request, 500, "Something went wrong on our side; "
                                "it has been logged. Please try again later.")
