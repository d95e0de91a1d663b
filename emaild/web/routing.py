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
from typing import Any, Callable, Coroutine

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

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


class FastPath(Resource):
    """
    A hot route answered without Klein's dispatch, whose cost is a large
    share of the cheapest routes' CPU: L{handler} says which requests are
    its own and how to answer them, running the same route code as the Klein
    route; everything else goes to C{inner} (the Klein resource, or another
    fast path).  An unexpected error is the web app's 500 page, never a
    traceback.  The work is not cancelled when the client goes away
    (database calls are uncancellable anyway); the answer is then dropped.
    """

    isLeaf = True
    #: what the log says could not be answered
    what = "a request"

    def __init__(self, web, inner: Resource):
        super().__init__()
        self.web = web
        self.inner = inner

    def handler(self, request) -> Callable[[], Coroutine[Any, Any, bytes]] | None:
        """The coroutine function that answers C{request} (its body), or None: not ours."""
        raise NotImplementedError

    def render(self, request):
        answer = self.handler(request)
        if answer is None:
            return self.inner.render(request)
        d: defer.Deferred = defer.ensureDeferred(answer())
        d.addErrback(lambda failure: self.web.server_error(request, failure))
        d.addCallback(_write_body, request)
        d.addErrback(lambda failure: log.failure("Error answering {what}", failure,
                                                 what=self.what))
        return NOT_DONE_YET


def _write_body(body: bytes, request) -> None:
    if request.channel is None:  # the client went away; the work is done
        return
    request.write(body)
    request.finish()
