"""
Small helpers every route module shares: JSON answers and form values.
(A leaf module: it imports nothing of emaild's web part.)
"""

from __future__ import annotations

import json


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


def client_address(request) -> str:
    """
    Who sent the request, for a log line: the peer's address, and what a
    proxy in front says in X-Forwarded-For (as given: it is not verified).
    """
    forwarded = request.getHeader(b"x-forwarded-for")
    peer = getattr(request.getClientAddress(), "host", "?")
    return f"{peer} (forwarded for {forwarded.decode('latin-1')})" if forwarded else str(peer)


def signed_in_redirect(request, home: str) -> bytes:
    """
    The answer to a launch that signed someone in: 303 to C{home}, never
    cached, with a link for a browser that does not follow it.
    """
    request.setResponseCode(303)
    request.setHeader(b"Location", home.encode("utf-8"))
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    return b'<!doctype html><title>Signed in</title><a href="%s">Continue</a>\n' % (
        home.encode("utf-8").replace(b"&", b"&amp;").replace(b'"', b"&quot;"))
