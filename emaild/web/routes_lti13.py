"""
Routes: LTI 1.3 (see L{emaild.people.lti13}).

C{GET /lti/jwks.json}
    The tool's public keys (RFC 7517), for the platform's registration.
C{GET|POST /lti/login}
    OIDC third-party login initiation.  Answered with a 302 to the
    platform's C{auth_login_url} and a state cookie; or, when the platform
    offers postMessage storage (C{lti_storage_target}), with a small page
    that stores the browser's secret in the platform's frame and then goes
    there.
C{POST /lti/launch} with C{id_token} and C{state}
    (dispatched here from L{emaild.web.routes_lti}).  Verified, then the
    person, course and group are created or updated, a session starts and
    the browser goes (303) to C{/home}; with postMessage storage, first a
    page that reads the secret back from the platform's frame and sends it
    to C{POST /lti/launch/confirm} (a same-origin C{fetch} with the
    C{X-Emaild-Lti-Storage} header, which a cross-site form cannot send).

Refusals are pages (400/401) naming what was wrong, and a log line with the
reason and the platform (never the token).

C{GET|POST /lti/login} is served by L{LoginFastPath}, without Klein's
routing: every LTI 1.3 launch is two requests, and Klein's per-request
work was a good part of what the login cost (see bench/RESULTS-lti.md).
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from typing import TYPE_CHECKING

from twisted.logger import Logger

from emaild.db.database import DatabaseUnavailable
from emaild.people.lti13_claims import Launch13, Lti13Refused
from emaild.people.lti13_states import LoginProof
from emaild.people.lti13_store import lock_identity_txn, upsert_from_lti13_txn
from emaild.web.lti_limits import too_many
from emaild.web.responses import client_address, json_response, signed_in_redirect
from emaild.web.routing import FastPath, Routes, uncancellable
from emaild.web.sessions import start_session_txn

if TYPE_CHECKING:
    from emaild.web.app import WebApp

routes = Routes()
register = routes.register

log = Logger()

#: the header the storage page's fetch sends (a cross-site form cannot)
STORAGE_HEADER = b"x-emaild-lti-storage"


def _params(request) -> dict[str, str]:
    """
    The first value of each query or form parameter, as text.
    """
    params = {}
    for name, values in request.args.items():
        try:
            key, value = name.decode("utf-8"), values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise Lti13Refused(400, "A parameter is not valid UTF-8 text.") from None
        if "\0" in key or "\0" in value:
            raise Lti13Refused(400, "A parameter contains a NUL character.")
        params.setdefault(key, value)
    return params


def _state_cookie_name(state: str) -> str:
    return "emaild_lti_state_" + hashlib.sha256(state.encode("utf-8")).hexdigest()[:16]


def _cookie_path(self: WebApp) -> str:
    return urllib.parse.urlsplit(self.config["http"]["public_url"]).path.rstrip("/") + "/lti/"


def _set_state_cookie(self: WebApp, request, state: str, value: str, max_age: int) -> None:
    attributes = [f"{_state_cookie_name(state)}={value}", f"Path={_cookie_path(self)}",
                  "HttpOnly", f"Max-Age={max_age}"]
    if self.config["http"]["public_url"].startswith("https://"):
        # sent back on the platform's cross-site form post, also inside its iframe
        attributes += ["Secure", "SameSite=None", "Partitioned"]
    request.responseHeaders.addRawHeader(b"Set-Cookie", "; ".join(attributes).encode("ascii"))


def _refused(self: WebApp, request, refused: Lti13Refused, what: str) -> bytes:
    log.warn("LTI 1.3 {what} refused ({status}): {reason} [platform {platform}, from {client}]",
             what=what, status=refused.status, reason=refused.message,
             platform=refused.platform or "?", client=client_address(request))
    return self.pages.error(request, refused.status,
                            f"This {what} from your course was refused: {refused.message}")


def _unavailable(self: WebApp, request, error) -> bytes:
    log.warn("LTI 1.3 launch failed: the database is unavailable ({error})", error=error)
    return self.pages.error(request, 503, "We cannot reach our database right now. "
                            "Please launch again from your course in a few minutes.")


@routes.route("/lti/jwks.json", methods=["GET", "HEAD"])
def lti_jwks(self: WebApp, request):
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Cache-Control", b"public, max-age=3600")
    return json.dumps(self.lti13.keys.jwks(), indent=2).encode("utf-8") + b"\n"


@routes.route("/lti/login", methods=["GET", "POST"])
async def lti_login(self: WebApp, request):
    refused = too_many(self, request, "login")
    if refused is not None:
        return refused
    try:
        redirect = await self.lti13.login(_params(request))
    except Lti13Refused as refused:
        return _refused(self, request, refused, "login")
    except DatabaseUnavailable as e:
        return _unavailable(self, request, e)
    request.setHeader(b"Cache-Control", b"no-store")
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    if redirect.storage_target is None:
        _set_state_cookie(self, request, redirect.state, redirect.browser_value,
                          int(self.config["lti13"]["state_ttl"]))
        request.setResponseCode(302)
        request.setHeader(b"Location", redirect.url.encode("utf-8"))
        return b""
    return self.pages.render(
        request, "lti13_storage.html", 200, title="Signing you in", mode="store",
        target=redirect.storage_target, origin=redirect.platform_origin,
        key=f"emaild_state_{redirect.state}", value=redirect.browser_value,
        next_url=redirect.url)


class LoginFastPath(FastPath):
    """
    C{GET|POST /lti/login} without Klein: the same route code (L{lti_login}),
    the same pages and headers, a 500 page (never a traceback) for an
    unexpected error.  Every other request goes to C{inner}.
    """

    what = "an LTI 1.3 login"

    def handler(self, request):
        if request.path != b"/lti/login" or request.method not in (b"GET", b"POST"):
            return None
        return lambda: lti_login(self.web, request)


async def lti13_launch(self: WebApp, request):
    """
    A POST to /lti/launch that carries an id_token.
    """
    try:
        params = _params(request)
        state = params.get("state", "")
        if "error" in params and "id_token" not in params:
            # the platform's authentication error response (OpenID Connect Core 3.1.2.6)
            raise Lti13Refused(400, "Your course's platform did not sign you in: "
                                    f"{params['error'][:100]!r}"
                                    + (f" ({params['error_description'][:300]})"
                                       if params.get("error_description") else "")
                                    + ". Launch again from your course.")
        cookie = request.getCookie(_state_cookie_name(state).encode("ascii")) if state else None
        verified = await self.lti13.verify(params.get("id_token", ""), state,
                                           cookie.decode("ascii", "replace") if cookie else None)
        if verified.storage_target is not None:
            await self.lti13.hold(state, verified.launch)
            log.info("LTI 1.3 launch: waiting for the platform storage check [platform "
                     "{platform}, sub {sub!r}]", platform=verified.launch.platform,
                     sub=verified.launch.sub)
            return self.pages.render(
                request, "lti13_storage.html", 200, title="Signing you in", mode="check",
                target=verified.storage_target, origin=verified.platform_origin,
                key=f"emaild_state_{state}", state=state,
                confirm_url=self.config["http"]["public_url"].rstrip("/") + "/lti/launch/confirm")
        home = await sign_in(self, request, verified.launch, verified.proof)
        if cookie:  # the state is used up (a refused launch may still use it)
            _set_state_cookie(self, request, state, "", 0)
    except Lti13Refused as refused:
        return _refused(self, request, refused, "launch")
    except DatabaseUnavailable as e:
        return _unavailable(self, request, e)
    return signed_in_redirect(request, home)


@routes.route("/lti/launch/confirm", methods=["POST"])
@uncancellable  # once confirmed, the state is used: finish signing in
async def lti_launch_confirm(self: WebApp, request):
    if request.getHeader(STORAGE_HEADER) != b"1":
        return json_response(request, 403, {"error": "This is called by our launch page only."})
    try:
        params = _params(request)
        launch = await self.lti13.confirm(params.get("state", ""), params.get("value", ""))
        home = await sign_in(self, request, launch)
    except Lti13Refused as refused:
        log.warn("LTI 1.3 launch refused ({status}): {reason} [from {client}]",
                 status=refused.status, reason=refused.message, client=client_address(request))
        return json_response(request, refused.status, {"error": refused.message})
    except DatabaseUnavailable as e:
        log.warn("LTI 1.3 launch failed: the database is unavailable ({error})", error=e)
        return json_response(request, 503, {"error": "We cannot reach our database right now. "
                                            "Please launch again in a few minutes."})
    return json_response(request, 200, {"location": home})


async def sign_in(self: WebApp, request, launch: Launch13, proof: LoginProof | None = None
                  ) -> str:
    """
    The person, course, group and session of a verified launch, in one
    transaction that first uses up its login state (C{proof}; None when the
    storage check did already); returns the URL of their home page.

    @raise Lti13Refused: the login state cannot be used (nothing written).
    """
    platform = self.lti13.platforms[launch.platform]
    if launch.rejected_email is not None:
        log.warn("LTI 1.3 launch: ignoring the address {address!r}, which is not usable "
                 "[platform {platform}, sub {sub!r}]", address=launch.rejected_email,
                 platform=launch.platform, sub=launch.sub)
    new = self.sessions.new(request)

    async def launch_txn(cursor):
        if proof is not None:
            await self.lti13.use_login_txn(cursor, proof)
        else:
            await lock_identity_txn(cursor, launch.issuer, launch.sub)
        outcome = await upsert_from_lti13_txn(
            cursor, issuer=launch.issuer, sub=launch.sub, email=launch.email,
            display_name=launch.display_name, roles=launch.roles,
            course_key=platform.course_key, context_id=launch.context_id,
            context_title=launch.context_title, group=launch.group,
            lti11_identity=launch.lti11_identity)
        await start_session_txn(cursor, outcome.person_id, new)
        return outcome

    outcome = await self.db.transaction(launch_txn)
    self.sessions.started(request, new, outcome.person_id)
    if outcome.email_conflict is not None:
        log.warn("LTI 1.3 launch: person {person_id} keeps their address: {address!r} belongs "
                 "to person {other} [platform {platform}, sub {sub!r}]",
                 person_id=outcome.person_id, address=launch.email,
                 other=outcome.email_conflict, platform=launch.platform, sub=launch.sub)
    log.info("LTI 1.3 launch: person {person_id}{how} [platform {platform}, sub {sub!r}, "
             "context_id {context_id!r}, group {group!r}]", person_id=outcome.person_id,
             how=(" (new)" if outcome.created else
                  " (linked from LTI 1.1)" if outcome.linked and launch.lti11_identity else
                  " (linked by address)" if outcome.linked else ""),
             platform=launch.platform, sub=launch.sub, context_id=launch.context_id,
             group=launch.group)
    if launch.memberships_url and outcome.course_id is not None:
        self.lti13.rosters.offered(launch.platform, outcome.course_id, launch.memberships_url)
    return self.config["http"]["public_url"].rstrip("/") + "/home"
