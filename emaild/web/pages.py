"""
HTML pages: Jinja2 templates under C{templates/web/} (the operator's folder
first), autoescaped, and the security headers every response carries.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource

from emaild.templating import environment

#: status -> (template, title) of the error pages
ERROR_PAGES = {
    400: "Bad request",
    401: "Not authorised",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    410: "Link expired",
    429: "Too many requests",
    500: "Something went wrong",
    503: "Temporarily unavailable",
}


def content_security_policy(lms_origins) -> str:
    ancestors = " ".join(["'self'", *lms_origins])
    return ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            f"form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors {ancestors}")


class SecurityHeaders(Resource):
    """
    Wraps the Klein resource so every response, error pages included,
    carries the security headers.  Routes may override them (e.g. a
    stricter Referrer-Policy).
    """

    isLeaf = True

    def __init__(self, inner: Resource, lms_origins=()):
        super().__init__()
        self.inner = inner
        self.csp = content_security_policy(lms_origins).encode("ascii")

    def render(self, request):
        request.setHeader(b"Content-Security-Policy", self.csp)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"same-origin")
        request.setHeader(b"Cross-Origin-Opener-Policy", b"same-origin-allow-popups")
        return self.inner.render(request)


class Pages:
    def __init__(self, config):
        self.env = environment(config["templates"]["dir"], "web")
        self.env.globals.update(site_url=config["http"]["public_url"])

    def render(self, request, template: str, code: int = 200, **context: Any) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return self.env.get_template(template).render(**context).encode("utf-8")

    def unavailable(self, request) -> bytes:
        """The 503 page for a database that does not answer."""
        return self.error(request, 503, "We cannot reach our database right now. "
                          "Please try again in a few minutes.")

    def signed_out(self, request, code: int, state: str) -> bytes:
        """The home page of someone not (or no longer) signed in."""
        title = "Signed out" if state == "signed_out" else "Not signed in"
        return self.render(request, "home.html", code, title=title, state=state)

    def error(self, request, status: int, message: str, **context: Any) -> bytes:
        """
        The error page for C{status}, saying C{message} (never a traceback).
        """
        return self.render(request, "error.html", status, status=status,
                           title=ERROR_PAGES.get(status, "Error"), message=message, **context)
