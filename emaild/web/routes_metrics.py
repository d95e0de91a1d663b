"""
C{GET /metrics}: Prometheus text exposition of this process's
L{emaild.metrics.Metrics}, with the outbox depth by state and QoS class read
from the database at scrape time (one C{GROUP BY}).

Who may scrape: a client on the loopback interface (127.0.0.1 or ::1) whose
request carries no C{X-Forwarded-For}/C{Forwarded} header (a reverse proxy on
the same machine adds one, so the world cannot scrape through it), or any
client with one of C{[api] tokens} as a bearer token.  Others get C{403}
(C{401} for a bad token).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from emaild.db.database import DatabaseUnavailable
from emaild.metrics import CONTENT_TYPE
from emaild.web.api_support import REALM, token_valid
from emaild.web.responses import json_response
from emaild.web.routing import Routes, uncancellable

if TYPE_CHECKING:
    from emaild.web.app import WebApp

routes = Routes()
register = routes.register

log = Logger()

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _local(request) -> bool:
    host = getattr(request.getClientAddress(), "host", None)
    proxied = request.getHeader("x-forwarded-for") or request.getHeader("forwarded")
    return host in LOOPBACK and not proxied


@routes.route("/metrics", methods=["GET", "HEAD"])
@uncancellable
async def metrics(self: WebApp, request):
    header = request.getHeader("authorization")
    if header is not None and not token_valid(self.config, header):
        request.setHeader(b"WWW-Authenticate", f'{REALM}, error="invalid_token"'.encode())
        return json_response(request, 401, {"error": "the bearer token is not valid"})
    if header is None and not _local(request):
        return json_response(request, 403, {
            "error": "metrics are served to 127.0.0.1, or with an [api] token as bearer token"})
    store = self.outbox.store
    try:
        counts = await store.counts()
    except DatabaseUnavailable as e:
        # the counters are still worth having; the depth series are absent
        log.warn("/metrics without the outbox depth: {e}", e=e)
        counts = {}
    body = self.metrics.render(counts)
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", CONTENT_TYPE.encode("ascii"))
    request.setHeader(b"Cache-Control", b"no-store")
    return body
