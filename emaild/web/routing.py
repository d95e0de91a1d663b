"""
How a concern's routes reach the web app without importing it.

Each C{routes_*.py} module collects its routes on its own L{Routes} table at
import time and exposes C{register(web)}; L{emaild.web.app.WebApp} calls
every module's C{register} with itself, and each route is then called as
C{route(web, request, **path values)}.  So route modules depend on the app
only through the object they are given, and any of them can be imported
first, alone.

    routes = Routes()
    register = routes.register

    @routes.route("/things/<int:thing_id>", methods=["GET", "HEAD"])
    async def thing(web, request, thing_id: int): ...
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class Routes:
    def __init__(self):
        self._routes: list[tuple[str, dict[str, Any], Callable]] = []

    def route(self, path: str, **rule: Any) -> Callable[[Callable], Callable]:
        """
        A decorator: serve C{path} (Werkzeug syntax) with the function;
        C{rule} as for C{Klein.route} (C{methods}, C{branch}, C{endpoint}).
        """

        def add(handler: Callable) -> Callable:
            self.add(path, handler, **rule)
            return handler

        return add

    def add(self, path: str, handler: Callable, **rule: Any) -> None:
        self._routes.append((path, rule, handler))

    def register(self, web) -> None:
        """
        Add every route to C{web.klein}, each called with C{web} first.
        """
        for path, rule, handler in self._routes:
            rule = dict(rule)
            rule.setdefault("endpoint", f"{handler.__module__}.{handler.__name__}")
            web.klein.route(path, **rule)(_bound(handler, web))


def _bound(handler: Callable, web) -> Callable:
    @functools.wraps(handler)
    def route(request, *args, **kwargs):
        return handler(web, request, *args, **kwargs)

    return route


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
        answer: defer.Deferred = defer.Deferred()

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
