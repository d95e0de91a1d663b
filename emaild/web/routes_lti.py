"""
Routes: LTI 1.1 launches.

C{POST /lti/launch} is where the course's LMS sends learners (usually into
an iframe).  The launch is verified (L{emaild.people.lti}), the person, their
course membership and roles, and the group named by C{[lti] group_parameter}
are created or updated in one transaction, a session is started and the
browser is sent (303) to the learner's home page, C{public_url + "/home"}
(absolute, so it is right behind a proxy that serves us under a path).

A refused launch gets an error page that says why (401 for an unknown
consumer key, a bad signature, a stale timestamp or a replayed nonce; 400
for a malformed launch) and a log line with the reason and the consumer key
(never the secret).

An LTI launch is a cross-site POST by design: the OAuth signature, not a
CSRF token, is what makes it trustworthy.  The session cookie is made by
L{Sessions} with the attributes that let it work in the LMS's iframe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from emaild.db.database import DatabaseUnavailable
from emaild.people.lti import LaunchRefused
from emaild.web.lti_limits import too_many
from emaild.web.responses import client_address, signed_in_redirect
from emaild.web.routing import Routes

if TYPE_CHECKING:
    from emaild.web.app import WebApp

routes = Routes()
register = routes.register

log = Logger()


@routes.route("/lti/launch", methods=["POST"])
async def lti_launch(self, request):
    refused = too_many(self, request, "launch")
    if refused is not None:
        return refused
    if b"id_token" in request.args or (b"state" in request.args and b"error" in request.args):
        # LTI 1.3 (an id_token, or the platform's error response): emaild.web.routes_lti13
        from emaild.web.routes_lti13 import lti13_launch

        return await lti13_launch(self, request)
    try:
        return await _launch(self, request)
    except DatabaseUnavailable as e:
        log.warn("LTI launch failed: the database is unavailable ({error})", error=e)
        return self.pages.error(request, 503, "We cannot reach our database right now. "
                                "Please launch again from your course in a few minutes.")


async def _launch(self: WebApp, request) -> bytes:
    verifier = self.lti
    query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
    request.content.seek(0)
    body = request.content.read()
    content_type = request.getHeader(b"content-type")
    try:
        launch = await verifier.verify(
            request.method.decode("ascii"), query,
            content_type.decode("latin-1") if content_type else None, body)
    except LaunchRefused as refused:
        log.warn("LTI launch refused ({status}): {reason} [consumer key {key!r}, from {client}]",
                 status=refused.status, reason=refused.message, key=refused.consumer_key,
                 client=client_address(request))
        return self.pages.error(request, refused.status,
                                f"This launch from your course was refused: {refused.message}")

    if launch.rejected_email is not None:
        log.warn("LTI launch: ignoring the address {address!r}, which is not usable "
                 "[consumer key {key!r}, user_id {user_id!r}]", address=launch.rejected_email,
                 key=launch.consumer_key, user_id=launch.user_id)
    if launch.group is not None and launch.context_id is None:
        log.warn("LTI launch names group {group!r} but no context_id: no group assigned "
                 "[consumer key {key!r}, user_id {user_id!r}]", group=launch.group,
                 key=launch.consumer_key, user_id=launch.user_id)
    outcome = await self.people.upsert_from_lti(
        consumer_key=launch.consumer_key, user_id=launch.user_id, email=launch.email,
        display_name=launch.display_name, roles=launch.roles, context_id=launch.context_id,
        context_title=launch.context_title, group=launch.group)
    if outcome.email_conflict is not None:
        log.warn("LTI launch: person {person_id} keeps their address: {address!r} belongs to "
                 "person {other} [consumer key {key!r}, user_id {user_id!r}]",
                 person_id=outcome.person_id, address=launch.email, other=outcome.email_conflict,
                 key=launch.consumer_key, user_id=launch.user_id)
    log.info("LTI launch: person {person_id}{how} [consumer key {key!r}, user_id {user_id!r}, "
             "context_id {context_id!r}, group {group!r}]", person_id=outcome.person_id,
             how=(" (new)" if outcome.created else
                  " (linked by address)" if outcome.linked else ""),
             key=launch.consumer_key, user_id=launch.user_id, context_id=launch.context_id,
             group=launch.group)

    await self.sessions.start(request, outcome.person_id)
    home = self.config["http"]["public_url"].rstrip("/") + "/home"
    return signed_in_redirect(request, home)
