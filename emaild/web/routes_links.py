"""
Routes: login links from mail (C{/email/<token>}).

C{GET /email/<token>}
    A valid login link signs its person in with a I{new} session (the
    browser's previous session, if any, is revoked: no fixation), records
    the use, and answers C{303 See Other} to the link's target (a path on
    this site or an allowed origin, checked when the link was minted).
    An unknown, altered, truncated or foreign token (another purpose, another
    row's secret) is a 404 page; a real but expired one is a 410 page that
    offers to mail a fresh link.  A database outage is a 503 page.  Never a
    500, never a traceback.

    Every response under C{/email/} (errors and unknown sub-paths included)
    carries C{Referrer-Policy: no-referrer}, because the token is in the URL
    and must not leak to the target or to any resource the page loads, and
    C{Cache-Control: no-store}.

Prefetching mail scanners
    Links stay valid until they expire and may be used any number of times,
    so a scanner that fetches a link does not burn it for the learner.  A
    scanner's GET does start a session, but the cookie goes to the scanner
    only; the learner's own click starts their own session (accepted
    practice for magic links).
    C{HEAD} never signs anyone in: it answers with the status and headers a
    GET would (303 with its Location, 404 or 410) but starts no session, sets
    no cookie and does not count as a use.  Link checkers that probe with
    HEAD therefore see a live link without side effects.

C{POST /email/<token>/fresh}  ("mail me a new link", the 410 page's form)
    Mails the link's person, at their I{current} address from the people
    store, a fresh login link to the same target (template C{login},
    QoS C{transactional}).  The answer page shows the address only masked
    (C{a***@example.org}).  A person without an address gets a page saying
    so.  At most C{[web] fresh_link_limit} requests per person per
    C{[web] fresh_link_window}, counted in C{fresh_link_requests} under a
    per-person advisory lock (so two concurrent requests cannot both take
    the last slot); beyond that a 429 page with C{Retry-After} saying when to
    try again.  If the link is still valid, the POST simply redirects (303)
    to it.

    CSRF without a session: the expired token itself is the capability (it
    is in the URL; only someone who has the mail can post here, and the mail
    only ever goes to the person's own address, never to the requester).
    In addition the form must echo the token in a hidden C{token} field (a
    bare POST to the URL, e.g. from a scanner or a replayed URL, sends
    nothing), and a request that a browser marks as cross-site
    (C{Sec-Fetch-Site: cross-site/same-site}, or an C{Origin} header that is
    neither this site's origin nor C{null}) is refused with a 403.  (The 410
    page is served with C{no-referrer}, so browsers send C{Origin: null} on
    its own form: that is accepted.)

Both routes
    A client that disconnects does not cancel the work in flight (see
    L{uncancellable}): the session, the use count or the mail are completed.
    A click is one SQL statement (one round trip, one commit): it checks
    the link, counts the use, revokes the browser's previous session and
    inserts the new one, the last three only if the link is valid.  That
    commit does not wait for the disk (L{SIGN_IN_DURABLE}).  Clicks
    read in the same reactor turn, or while such statements are in flight,
    share one (L{emaild.links.clicks}), and each answer waits for its
    statement's commit.  C{GET /email/<token>} is served by L{LoginLinkFastPath},
    in front of Klein.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from klein.interfaces import IKleinRequest
from twisted.logger import Logger

from emaild.db.database import DatabaseUnavailable
from emaild.links.service import LOGIN, LinkError
from emaild.outbound.compose import ComposeError, check_address
from emaild.web.responses import form_value
from emaild.web.routing import FastPath, Routes, uncancellable
from emaild.web.sessions import SessionStore

if TYPE_CHECKING:
    from emaild.web.app import WebApp

routes = Routes()
register = routes.register

log = Logger()

#: first key of the advisory lock that serialises one person's fresh-link requests
_FRESH_LOCK_CLASS = 0x656D6C6B  # "emlk"

#: the email template of a fresh login link (subject, text and HTML)
#: the e-mail template of sign-in links (it calls link(target))
LOGIN_TEMPLATE = "login"

#: Whether a click's sign-in (its new session, the revocation of the
#: browser's previous one, the link's use count) waits for the disk before
#: its redirect.  It does not: the statement commits asynchronously, so
#: it is visible to the learner's next request at once, and only a crash of
#: PostgreSQL itself within about 0.6 s of the click loses it; the learner
#: then finds themselves signed out and clicks the same link again (links
#: stay valid until they expire).  Waiting for the WAL flush is what stalled
#: every click in flight for 100-600 ms whenever one fdatasync was slow
#: (a new WAL segment, a busy disk; bench/RESULTS-web.md), and nothing in
#: a session is worth that: no mail, post or unsubscribe depends on it.
SIGN_IN_DURABLE = False

#: characters left as they are in a redirect target (already a valid URL)
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~-._"

_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def mask_address(address: str) -> str:
    """
    C{alice@example.org} -> C{a***@example.org}: enough for a person to
    recognise their own address, not enough to learn someone else's.
    """
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def _when(seconds: float) -> str:
    seconds = max(1, int(seconds + 0.999))
    if seconds < 90:
        return f"{seconds} seconds"
    minutes = (seconds + 59) // 60
    if minutes < 90:
        return f"{minutes} minutes"
    hours = (minutes + 59) // 60
    return f"{hours} hours"


class FreshLinkRequests:
    """
    The web part's C{fresh_link_requests} table: who asked for a fresh
    login link when, for the per-person rate limit.
    """

    def __init__(self, db):
        self.db = db

    def take(self, person_id: int, limit: int, window: float):
        """
        Record a request for C{person_id} if fewer than C{limit} were made in
        the last C{window} seconds.  Fires with C{(True, 0)} when recorded,
        or C{(False, seconds until the oldest one leaves the window)}.
        """
        return self.db.transaction(self._take, person_id, limit, window)

    async def _take(self, cursor, person_id, limit, window):
        await cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                             (_FRESH_LOCK_CLASS, person_id % 2147483647))
        await cursor.execute(
            "DELETE FROM fresh_link_requests WHERE person_id = %s"
            " AND requested_at <= now() - make_interval(secs => %s)", (person_id, window))
        await cursor.execute(
            "SELECT count(*), extract(epoch FROM min(requested_at)"
            "   + make_interval(secs => %s) - now())::float8"
            " FROM fresh_link_requests WHERE person_id = %s", (window, person_id))
        count, wait = cursor.fetchone()
        if count >= limit:
            return False, max(float(wait or 0.0), 1.0)
        await cursor.execute(
            "INSERT INTO fresh_link_requests (person_id) VALUES (%s)", (person_id,))
        return True, 0.0


def _no_referrer(request) -> None:
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"Cache-Control", b"no-store")


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _cross_site(request, site_origin: str) -> bool:
    """
    Whether the browser says this POST comes from another site.
    """
    fetch_site = (request.getHeader(b"sec-fetch-site") or b"").lower()
    if fetch_site in (b"cross-site", b"same-site"):
        return True
    origin = request.getHeader(b"origin")
    if origin is None:
        return False
    origin = origin.decode("latin-1").strip().lower()
    return origin not in ("null", site_origin)


def _unavailable(self: WebApp, request) -> bytes:
    return self.pages.error(request, 503, "We cannot reach our database right now. "
                            "Please try your link again in a few minutes.")


def _unknown(self: WebApp, request) -> bytes:
    return self.pages.render(request, "link_invalid.html", 404, status=404, title="Link not valid")


def _expired(self: WebApp, request, token: str) -> bytes:
    return self.pages.render(request, "link_expired.html", 410, status=410, title="Link expired",
                             token=token)


def _unusable_address(self: WebApp, request, address: str) -> bytes:
    return self.pages.render(request, "link_no_address.html", 200, title="No usable email address",
                             masked=mask_address(address), unusable=True)


@routes.route("/email/<token>", methods=["GET", "HEAD"])
@uncancellable
async def login_link(self: WebApp, request, token: str):
    return await _login_link(self, request, token)


async def _login_link(self: WebApp, request, token: str) -> bytes:
    _no_referrer(request)
    try:
        if request.method == b"HEAD":
            resolution = await self.links.resolve(token, LOGIN)
        else:
            # one statement (shared with the clicks that arrive meanwhile):
            # check the link, count the use, start the session; committed
            # without waiting for the disk (SIGN_IN_DURABLE)
            new = self.sessions.new(request)
            resolution = await self.links.use_batched(token, LOGIN, new,
                                                      SessionStore.start_many_ctes,
                                                      durable=SIGN_IN_DURABLE)
        if resolution.status == "unknown":
            return _unknown(self, request)
        if resolution.status == "expired":
            return _expired(self, request, token)
        link = resolution.link
        if request.method != b"HEAD":
            self.sessions.started(request, new, link.person_id)
    except DatabaseUnavailable:
        return _unavailable(self, request)
    # targets were checked when minted; quote anything non-ASCII (an IRI)
    location = quote(self.links.redirect_location(link), safe=_URL_SAFE).encode("ascii")
    request.setResponseCode(303)
    request.setHeader(b"Location", location)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"Signed in; continue to " + location + b"\n"


class LoginLinkFastPath(FastPath):
    """
    C{GET /email/<token>} without Klein: a click is the hottest request the
    site serves (a mail to a whole course, everyone clicking at once), and
    Klein's per-request routing (werkzeug's map binding and matching among
    every route, its Deferred chain and response handling) was a large
    share of a click's CPU (see bench/RESULTS-web.md).  Only a plain C{GET} of a token made of
    letters and digits (every token is) takes this path, and it runs the
    very same code as the Klein route; anything else (HEAD, other methods,
    other characters, sub-paths) goes to C{inner}, the Klein resource.

    The work is not cancelled when the client goes away (nothing here
    cancels it, and database calls are uncancellable anyway): the session
    and the use count are written; the answer is then dropped.
    """

    what = "a login link"

    def handler(self, request):
        path = request.path
        if request.method != b"GET" or not path.startswith(b"/email/") or not path[7:].isalnum():
            return None
        token = path[7:].decode("ascii")  # isalnum() on bytes: ASCII letters and digits only
        return lambda: _login_link(self.web, request, token)


@routes.route("/email/<token>/fresh", methods=["POST"])
@uncancellable
async def fresh_link(self: WebApp, request, token: str):
    _no_referrer(request)
    site_origin = _origin_of(self.config["http"]["public_url"])
    try:
        resolution = await self.links.resolve(token, LOGIN)
        if resolution.status == "unknown":
            return _unknown(self, request)
        if _cross_site(request, site_origin):
            return self.pages.error(request, 403, "This form can only be sent from our own page. "
                                    "Open the link from your email again.")
        if form_value(request, "token") != token:
            return self.pages.error(request, 400, "The form was incomplete. Open the link "
                                    "from your email again and use its button.")
        if resolution.status == "ok":
            # still valid (e.g. the page was open across a clock change): use it
            request.setResponseCode(303)
            request.setHeader(b"Location", f"/email/{token}".encode("ascii"))
            return b""
        link = resolution.link
        person = await self.people.get(link.person_id)
        if person is None:
            return _unknown(self, request)
        if not person.email:
            return self.pages.render(request, "link_no_address.html", 200,
                                     title="No email address", unusable=False)
        try:
            check_address(person.email)
        except ComposeError:
            return _unusable_address(self, request, person.email)
        if self.outbox is None:
            return self.pages.error(request, 503, "We cannot send mail from here right now.")
        web = self.config["web"]
        allowed, wait = await self.hs.get_fresh_link_requests().take(
            person.id, web["fresh_link_limit"], web["fresh_link_window"])
        if not allowed:
            request.setHeader(b"Retry-After", str(int(wait + 0.999)).encode("ascii"))
            return self.pages.render(
                request, "link_rate_limited.html", 429, status=429, title="Too many requests",
                wait=_when(wait),
                retry_at=time.strftime("%H:%M UTC", time.gmtime(time.time() + wait)),
                limit=web["fresh_link_limit"], window=_when(web["fresh_link_window"]))
        target = link.target
        try:
            self.links.request(person.id, LOGIN, target)
        except LinkError:
            target = "/home"  # the target is no longer allowed by the configuration
        try:
            report = await self.outbox.enqueue_people(
                LOGIN_TEMPLATE, [(person.id, {"target": target})], kind="login")
        except ComposeError as e:
            log.error("Cannot mail a fresh login link to person {person}: {error}",
                      person=person.id, error=str(e))
            return self.pages.error(request, 503, "We could not prepare the email right now; "
                                    "it has been logged. Please try again later.")
        if report.rejected:
            return _unusable_address(self, request, person.email)
    except DatabaseUnavailable:
        return _unavailable(self, request)
    return self.pages.render(request, "link_sent.html", 200, title="New link sent",
                             masked=mask_address(person.email))


@routes.route("/email/", branch=True, methods=_ALL_METHODS)
def other_email_paths(self: WebApp, request):
    """
    Anything else under /email/ (a wrong method, a token with a slash):
    the usual 404/405 pages, but never leaking the URL as a referrer.
    """
    _no_referrer(request)
    segments = [s for s in IKleinRequest(request).branch_segments if s]
    exists = (len(segments) == 1 and request.method not in (b"GET", b"HEAD")) or (
        len(segments) == 2 and segments[1] == "fresh" and request.method != b"POST")
    if exists:
        return self.pages.error(request, 405, "This page does not accept that kind of request.")
    return _unknown(self, request)
