"""
The Klein application.  Routes live in small modules by concern; this one
builds the app and holds the health check.
"""

from __future__ import annotations

import json

from klein import Klein
from twisted.internet import defer
from twisted.logger import Logger

log = Logger()

#: how long /healthz waits for the database before calling it down
HEALTH_QUERY_TIMEOUT = 2.0


def json_response(request, status: int, body) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return json.dumps(body, indent=2, sort_keys=True).encode("utf-8") + b"\n"


class WebApp:
    """
    @param parts: the daemon's parts, by name, each with a C{health()} that
        returns a JSON-able dict with at least C{"state"}; the database part
        is checked with a real query.
    """

    app = Klein()

    def __init__(self, reactor, db, parts=None):
        self.reactor = reactor
        self.db = db
        self.parts = parts or {}

    def resource(self):
        return self.app.resource()

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
