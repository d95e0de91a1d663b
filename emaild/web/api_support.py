"""
What every C{/api/v1} route shares: bearer-token checks, reading a JSON body
within C{[api] max_body}, checking fields, and answering every error as
C{{"error": "..."}} with the right status (never a page, never a traceback).

L{resource} registers one path with a handler per method: the path accepts
every method at the routing level, so a method it does not serve is our
JSON C{405} (with C{Allow}) instead of the site's HTML one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from twisted.logger import Logger

from emaild.db.database import DatabaseUnavailable
from emaild.web.responses import json_response
from emaild.web.routing import Routes, uncancellable

if TYPE_CHECKING:
    from emaild.web.app import WebApp

log = Logger()

PREFIX = "/api/v1"
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
#: PostgreSQL bigint: larger ids exist nowhere (and would be a database error)
MAX_ID = 2**63 - 1
REALM = 'Bearer realm="emaild"'


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def respond(self, request) -> bytes:
        for name, value in self.headers.items():
            request.setHeader(name.encode("ascii"), value.encode("ascii"))
        return json_response(request, self.status, {"error": self.message})


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


# -- authentication ---------------------------------------------------------------
def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def token_valid(config, header: str | None) -> bool:
    """
    Whether an C{Authorization} header carries one of C{[api] tokens}.  Every
    token is compared, in constant time, on digests (so neither which token
    nor its length is told by timing).
    """
    tokens = config["api"]["tokens"]
    scheme, _, given = (header or "").strip().partition(" ")
    if not tokens or scheme.lower() != "bearer" or not given.strip():
        return False
    given_digest = _digest(given.strip().encode("utf-8", "replace"))
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given_digest, _digest(token.encode("utf-8")))
    return found


def check_token(config, request) -> None:
    if not config["api"]["tokens"]:
        raise ApiError(403, "the API is disabled: no [api] tokens are configured")
    header = request.getHeader("authorization")
    if not header:
        raise ApiError(401, "missing credentials: send the header 'Authorization: Bearer "
                            "<token>' with one of the [api] tokens",
                       {"WWW-Authenticate": REALM})
    if not token_valid(config, header):
        raise ApiError(401, "the bearer token is not valid",
                       {"WWW-Authenticate": f'{REALM}, error="invalid_token"'})


# -- request bodies -------------------------------------------------------------------
def _no_constants(name: str):
    raise ValueError(f"{name} is not valid JSON")


def read_json(config, request) -> dict:
    """
    The request body as a JSON object.

    @raise ApiError: 413 larger than C{[api] max_body}, 415 not
        C{application/json}, 400 not a JSON object.
    """
    limit = config["api"]["max_body"]
    length = (request.getHeader("content-length") or "").strip()
    if length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the body is larger than the limit of {limit} bytes")
    media = (request.getHeader("content-type") or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not re.fullmatch(r"application/[\w.+-]+\+json", media):
        raise ApiError(415, f"the body must be JSON (Content-Type: application/json), "
                            f"not {media or 'missing'!r}")
    request.content.seek(0)
    raw = request.content.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, f"the body is larger than the limit of {limit} bytes")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the body is not valid JSON: {e.msg} at line {e.lineno} "
                            f"column {e.colno}") from None
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}"[:200]) from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


class Fields:
    """
    Typed access to a JSON object's fields; every problem is a 400 that
    names the field (C{where} prefixes nested ones: C{recipients[2].email}).
    """

    def __init__(self, body: dict, allowed: tuple[str, ...], where: str = ""):
        self.body = body
        self.where = where
        for key in body:
            if key not in allowed:
                raise ApiError(400, f"{self.name(key)}: unknown field; allowed: "
                                    f"{', '.join(allowed)}")

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def bad(self, key: str, problem: str) -> ApiError:
        return ApiError(400, f"{self.name(key)}: {problem}")

    def _get(self, key: str, required: bool):
        if key not in self.body or self.body[key] is None:
            if required:
                raise self.bad(key, "is required")
            return None
        return self.body[key]

    def string(self, key: str, required: bool = True, max_length: int = 500,
               pattern: str | None = None, default: str | None = None) -> str | None:
        value = self._get(key, required)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.bad(key, f"must be a string, got {_json_type(value)}")
        if required and not value.strip():
            raise self.bad(key, "must not be empty")
        if len(value) > max_length:
            raise self.bad(key, f"must be at most {max_length} characters")
        if pattern and not re.fullmatch(pattern, value):
            raise self.bad(key, f"{value!r} is not allowed here (expected {pattern})")
        return value

    def identifier(self, key: str, required: bool = True) -> int | None:
        value = self._get(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(key, f"must be a whole number, got {_json_type(value)}")
        if not 1 <= value <= MAX_ID:
            raise self.bad(key, f"must be a positive id, got {value}")
        return value

    def strings(self, key: str, max_items: int = 50) -> list[str]:
        value = self._get(key, False)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.bad(key, "must be a list of non-empty strings")
        if len(value) > max_items:
            raise self.bad(key, f"must have at most {max_items} items")
        return value

    def object(self, key: str) -> dict:
        value = self._get(key, False)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.bad(key, f"must be an object, got {_json_type(value)}")
        return value

    def array(self, key: str, max_items: int) -> list:
        value = self._get(key, True)
        if not isinstance(value, list):
            raise self.bad(key, f"must be a list, got {_json_type(value)}")
        if not value:
            raise self.bad(key, "must not be empty")
        if len(value) > max_items:
            raise self.bad(key, f"must have at most {max_items} items")
        return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


def path_id(value: int, what: str) -> int:
    if not 1 <= value <= MAX_ID:
        raise not_found(f"there is no {what} {value}")
    return value


def query_arg(request, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"{name}: is not UTF-8") from None


# -- registering routes ---------------------------------------------------------------
Handler = Callable[..., Awaitable[bytes]]


def answer(request, status: int, body) -> bytes:
    return json_response(request, status, body)


def resource(routes: Routes, path: str, *, auth: bool = True, **handlers: Handler) -> None:
    """
    Add to C{routes}: serve C{path} (Werkzeug syntax) with C{handlers} by method (C{GET=…});
    HEAD is served by the GET handler.  Every handler gets
    C{(app, request, **path values)} once the token (C{auth}) was checked.
    """
    allowed = sorted(handlers) + (["HEAD"] if "GET" in handlers else [])
    endpoint = "api " + path

    async def route(self: WebApp, request, **values):
        method = request.method.decode("ascii", "replace")
        handler = handlers.get("GET" if method == "HEAD" else method)
        try:
            if handler is None:
                raise ApiError(405, f"{method} is not allowed here; allowed: "
                                    f"{', '.join(allowed)}", {"Allow": ", ".join(allowed)})
            if auth:
                check_token(self.config, request)
            return await handler(self, request, **values)
        except ApiError as e:
            return e.respond(request)
        except DatabaseUnavailable:
            return answer(request, 503, {"error": "the database is unavailable; try again "
                                                  "in a few minutes"})
        except Exception:
            log.failure("Error serving {method} {path}", method=method, path=request.path)
            return answer(request, 500, {"error": "internal error; it has been logged"})

    route.__name__ = route.__qualname__ = endpoint
    routes.add(path, uncancellable(route), methods=ALL_METHODS, endpoint=endpoint)
