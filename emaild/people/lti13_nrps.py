"""
Names and Role Provisioning Services 2.0: a course's whole roster, so the
weekly update and announcements reach the members who never launched.

    1. An access token from the platform's C{auth_token_url}: OAuth 2.0
       client credentials with a JWT client assertion (RFC 7523) signed by
       our key (C{iss} = C{sub} = client_id, C{aud} = the token URL, C{jti},
       C{exp} in 5 minutes), for the scope
       C{https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly}.
    2. The membership container at the launch's C{context_memberships_url}
       (C{Accept: application/vnd.ims.lti-nrps.v2.membershipcontainer+json}),
       following C{Link: <…>; rel="next"} page by page.
    3. Each page stored as it arrives (L{emaild.people.store.upsert_roster});
       after the last, members earlier rosters listed and this one does not
       have left (L{emaild.people.store.end_roster}); so do those listed as
       Inactive or Deleted.  Those who left the course also leave its
       groups (their reply addresses stop working, they get no more group
       mail), through the groups part's store; checked on every sync, so a
       sync cut short between the two catches up on the next.

A launch with the NRPS claim remembers the URL and starts a sync in the
background when the last one began more than C{[lti13] nrps_interval} ago
(the claim on the sync row is one statement, so several processes start it
once; a sync that failed or was cut short by a restart is retried after
L{RETRY_AFTER}); C{emaild course sync COURSE} runs one now.

L{Rosters} is a service of the daemon's tree, stopped before the database
closes: from then on a launch starts no sync, and a sync under way stops at
once (its request to the platform is cancelled; the pages stored so far
stay, nobody is marked as having left) and records why, to be retried after
the next start.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import time
import urllib.parse

import jwt
from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers

from emaild.outbound.compose import ComposeError, check_address
from emaild.people.lti13_jwks import read_body
from emaild.people.lti13_store import roster_leavers
from emaild.people.store import RosterMember, end_roster, upsert_roster

log = Logger()

SCOPE = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"
MEMBERSHIPS = "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"
#: bounds on what a platform can make us read
MAX_PAGE = 8 * 1024 * 1024
MAX_PAGES = 2000
#: seconds after which a sync that failed or never finished may start again
RETRY_AFTER = 900.0
_NEXT = re.compile(r'<([^>]+)>\s*;[^,]*\brel\s*=\s*"?next"?', re.IGNORECASE)


class NrpsError(Exception):
    """
    The roster could not be had; the message says where and why.
    """


def client_assertion(platform, kid: str, key, now: float | None = None) -> str:
    now = time.time() if now is None else now
    return jwt.encode({"iss": platform.client_id, "sub": platform.client_id,
                       "aud": platform.auth_token_url, "iat": int(now), "exp": int(now) + 300,
                       "jti": secrets.token_urlsafe(24)},
                      key, algorithm="RS256", headers={"kid": kid})


def next_link(headers: Headers) -> str | None:
    for value in headers.getRawHeaders(b"link", []):
        match = _NEXT.search(value.decode("latin-1"))
        if match:
            return match.group(1)
    return None


def _member(raw) -> RosterMember | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("user_id"), str) or not raw["user_id"]:
        return None
    if len(raw["user_id"]) > 255 or "\0" in raw["user_id"]:
        return None
    email = None
    if isinstance(raw.get("email"), str) and raw["email"].strip():
        try:
            email = check_address(raw["email"].strip())
        except ComposeError:
            email = None
    name = raw.get("name") if isinstance(raw.get("name"), str) else ""
    if not name.strip():
        name = " ".join(v for v in (raw.get("given_name"), raw.get("family_name"))
                        if isinstance(v, str))
    name = " ".join(name.replace("\0", "").split())
    roles = raw.get("roles") if isinstance(raw.get("roles"), list) else []
    status = raw.get("status", "Active")
    return RosterMember(sub=raw["user_id"], email=email, display_name=name,
                        roles=tuple(r.strip() for r in roles
                                    if isinstance(r, str) and r.strip() and "\0" not in r),
                        status=status if status in ("Active", "Inactive", "Deleted") else "Active")


#: what a sync cut short by the daemon's shutdown records
STOPPED = "the daemon stopped during the sync; it is retried after the next start"


class Rosters(service.Service):
    name = "rosters"

    def __init__(self, reactor, config, db, keys, groups, agent=None, timeout: float = 30.0):
        self.reactor = reactor
        self.db = db
        self.keys = keys
        #: the groups part's L{emaild.groups.store.GroupStore}
        self.groups = groups
        self.platforms = dict(config.lti13_platforms)
        self.interval = config["lti13"]["nrps_interval"]
        self.agent = agent or Agent(reactor)
        self.timeout = timeout
        #: the background syncs under way (tests and shutdown wait for them)
        self.syncs: set[defer.Deferred] = set()
        #: set by L{stopService}: no new sync, and those under way stop
        self.stopping = False
        self._requests: set[defer.Deferred] = set()

    def stopService(self):  # noqa: N802
        """
        Start no more syncs, cut short those under way (their requests to
        the platform are cancelled), and fire once they have recorded that.
        """
        service.Service.stopService(self)
        self.stopping = True
        for request in list(self._requests):
            request.cancel()
        return defer.gatherResults(list(self.syncs)).addCallback(lambda _: None)

    # -- from a launch -------------------------------------------------------
    def offered(self, platform: str, course_id: int, url: str) -> defer.Deferred:
        """
        A launch offered the roster of C{course_id} at C{url}: remember it
        and, if a sync is due, sync; all in the background (the launch does
        not wait).  The Deferred (also in L{running}) never fails.
        """
        if self.stopping:
            return defer.succeed(False)
        d = defer.ensureDeferred(self._offered(platform, course_id, url))
        self.syncs.add(d)
        d.addBoth(lambda result: (self.syncs.discard(d), result)[1])
        return d

    async def _offered(self, platform: str, course_id: int, url: str) -> bool:
        try:
            started = await self._claim(platform, course_id, url, due_only=True)
        except Exception:  # noqa: BLE001 (background work: log, never crash the reactor)
            log.failure("NRPS: cannot record the roster URL of course {course}", course=course_id)
            return False
        if started is None:
            return False
        await self._run(platform, course_id, url, started)
        return True

    async def sync_now(self, course_id: int) -> dict:
        """
        Sync a course whose roster URL a launch left (for C{emaild course sync}).

        @raise NrpsError: no launch offered its roster yet, or the sync failed.
        """
        rows = await self.db.runQuery(
            "SELECT platform, memberships_url FROM lti13_roster_syncs WHERE course_id = %s",
            (course_id,))
        if not rows:
            raise NrpsError("no LTI 1.3 launch of this course has offered its roster (the "
                            "Names and Role Provisioning Services claim) yet")
        platform, url = rows[0]
        started = await self._claim(platform, course_id, url, due_only=False)
        return await self._sync(platform, course_id, url, started)

    async def _claim(self, platform: str, course_id: int, url: str, due_only: bool):
        """
        The database's start time of a new sync, or None when one began
        less than the interval ago (C{due_only}).
        """
        rows = await self.db.runQuery(
            "INSERT INTO lti13_roster_syncs (course_id, platform, memberships_url, started_at)"
            " VALUES (%(course)s, %(platform)s, %(url)s, now())"
            " ON CONFLICT (course_id) DO UPDATE SET platform = EXCLUDED.platform,"
            "   memberships_url = EXCLUDED.memberships_url,"
            "   started_at = CASE WHEN NOT %(due_only)s OR lti13_roster_syncs.started_at IS NULL"
            "     OR lti13_roster_syncs.started_at < now() - make_interval(secs => %(interval)s)"
            # a sync that failed or never finished (a restart) is retried sooner
            "     OR ((lti13_roster_syncs.finished_at IS NULL"
            "          OR lti13_roster_syncs.finished_at < lti13_roster_syncs.started_at)"
            "         AND lti13_roster_syncs.started_at"
            "             < now() - make_interval(secs => %(retry)s))"
            "     THEN now() ELSE lti13_roster_syncs.started_at END"
            " RETURNING started_at, started_at = now()",
            {"course": course_id, "platform": platform, "url": url, "due_only": due_only,
             "interval": self.interval, "retry": min(RETRY_AFTER, self.interval)})
        started, fresh = rows[0]
        return started if fresh else None

    async def _run(self, platform: str, course_id: int, url: str, started) -> None:
        try:
            await self._sync(platform, course_id, url, started)
        except NrpsError as e:
            log.warn("NRPS: the roster of course {course} was not synced: {error}",
                     course=course_id, error=e)
        except Exception:  # noqa: BLE001 (background work: log, never crash the reactor)
            log.failure("NRPS: the roster sync of course {course} failed", course=course_id)

    # -- the sync --------------------------------------------------------------
    async def _sync(self, platform_name: str, course_id: int, url: str, started) -> dict:
        totals = {"members": 0, "new": 0, "updated": 0, "left": 0, "pages": 0, "left_groups": 0}
        try:
            platform = self.platforms.get(platform_name)
            if platform is None:
                raise NrpsError(f"the platform {platform_name!r} is no longer configured")
            token = await self.access_token(platform)
            next_url: str | None = url
            while next_url is not None:
                if self.stopping:
                    raise NrpsError(STOPPED)
                if totals["pages"] >= MAX_PAGES:
                    raise NrpsError(f"the roster has more than {MAX_PAGES} pages")
                members, next_url = await self._page(next_url, token)
                totals["pages"] += 1
                totals["members"] += len(members)
                counts = await upsert_roster(self.db, issuer=platform.issuer,
                                             course_id=course_id, members=members)
                for key in ("new", "updated", "left"):
                    totals[key] += counts[key]
            totals["left"] += await end_roster(self.db, course_id, started)
            totals["left_groups"] = await self._leave_groups(course_id)
        except NrpsError as e:
            await self.db.runOperation(
                "UPDATE lti13_roster_syncs SET error = %s WHERE course_id = %s",
                (str(e)[:500], course_id))
            raise
        await self.db.runOperation(
            "UPDATE lti13_roster_syncs SET finished_at = now(), members = %s, error = NULL"
            " WHERE course_id = %s", (totals["members"], course_id))
        log.info("NRPS: course {course}: {members} members ({new} new, {left} left) in "
                 "{pages} pages; {left_groups} group memberships ended", course=course_id,
                 **totals)
        return totals

    async def _leave_groups(self, course_id: int) -> int:
        """
        End the group memberships, in the course's groups, of those who left
        the course by its roster; how many were ended.
        """
        leavers = await roster_leavers(self.db, course_id)
        ended = 0
        if not leavers:
            return ended
        for group, _ in await self.groups.list(course_id):
            for member in await self.groups.members(group.id):
                if member.person_id in leavers and await self.groups.leave(group.id,
                                                                           member.person_id):
                    ended += 1
        return ended

    async def _request(self, method: bytes, url: str, headers: dict, body: bytes | None = None):
        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
        if self.stopping:
            raise NrpsError(STOPPED)
        try:
            response = await self._cancellable(
                self.agent.request(method, url.encode("ascii"), Headers(headers), producer))
            data = await self._cancellable(read_body(response, MAX_PAGE))
        except defer.TimeoutError:
            raise NrpsError(f"{url} did not answer within {self.timeout:.0f} s") from None
        except Exception as e:  # noqa: BLE001 (any failure to fetch is the same answer)
            if self.stopping:  # cancelled by stopService (the Agent wraps the CancelledError)
                raise NrpsError(STOPPED) from None
            raise NrpsError(f"{url} could not be reached: {type(e).__name__}: "
                            f"{str(e)[:200]}") from None
        if data is None:
            raise NrpsError(f"{url} answered more than {MAX_PAGE} bytes")
        return response, data

    def _cancellable(self, d: defer.Deferred) -> defer.Deferred:
        """
        C{d} with our timeout, cancelled by L{stopService} while it waits.
        """
        d.addTimeout(self.timeout, self.reactor)
        self._requests.add(d)
        d.addBoth(lambda result: (self._requests.discard(d), result)[1])
        return d

    async def access_token(self, platform) -> str:
        kid, key = self.keys.signing_key()
        form = urllib.parse.urlencode({
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": client_assertion(platform, kid, key),
            "scope": SCOPE}).encode("ascii")
        response, data = await self._request(
            b"POST", platform.auth_token_url,
            {b"content-type": [b"application/x-www-form-urlencoded"],
             b"accept": [b"application/json"]}, form)
        try:
            answer = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            answer = {}
        if response.code != 200 or not isinstance(answer, dict) \
                or not isinstance(answer.get("access_token"), str):
            detail = ""
            if isinstance(answer, dict) and answer.get("error"):
                detail = f": {str(answer['error'])[:100]}"
                if answer.get("error_description"):
                    detail += f" ({str(answer['error_description'])[:200]})"
            raise NrpsError(f"the platform's token endpoint {platform.auth_token_url} refused "
                            f"the access token (HTTP {response.code}{detail})")
        return answer["access_token"]

    async def _page(self, url: str, token: str) -> tuple[list[RosterMember], str | None]:
        response, data = await self._request(
            b"GET", url, {b"accept": [MEMBERSHIPS.encode()],
                          b"authorization": [f"Bearer {token}".encode("ascii")]})
        if response.code != 200:
            raise NrpsError(f"the roster at {url} answered HTTP {response.code}")
        try:
            container = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise NrpsError(f"the roster at {url} is not JSON") from None
        if not isinstance(container, dict) or not isinstance(container.get("members"), list):
            raise NrpsError(f"the roster at {url} has no members list")
        members = [m for m in (_member(raw) for raw in container["members"]) if m is not None]
        following = next_link(response.headers)
        if following is not None:
            following = urllib.parse.urljoin(url, following)
        return members, following
