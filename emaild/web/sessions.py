"""
Sessions in PostgreSQL behind our own cookie (Klein's are in memory, start
on GET only and set no SameSite).

The cookie holds a random token; the table holds its SHA-256, the person,
a CSRF token, and idle and absolute expiry.  Starting a session always makes
a new token and revokes the one the browser had (no session fixation).

Over https the cookie is C{__Host-emaild_session; Secure; HttpOnly;
SameSite=None; Partitioned}, so it works both in a top-level window and
inside the LMS's iframe (where third-party cookies are partitioned); over
plain http (development) it is C{SameSite=Lax}.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import attrs

#: write last_seen_at at most this often (not on every request)
TOUCH_INTERVAL = 60.0


@attrs.frozen
class Session:
    #: SHA-256 of the cookie token (the row's key)
    id: str
    person_id: int
    csrf_token: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class SessionStore:
    """
    The web part's C{web_sessions} table.
    """

    def __init__(self, db):
        self.db = db

    async def create(self, person_id: int, now: float, max_age: float, replaces: str | None):
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)

        # one statement (revoke the old session and insert the new one):
        # signing in is the hot path of every link click
        await self.db.runOperation(
            "WITH revoked AS (UPDATE web_sessions SET revoked_at = now()"
            "   WHERE id = %s AND revoked_at IS NULL)"
            " INSERT INTO web_sessions (id, person_id, csrf_token, expires_at)"
            " VALUES (%s, %s, %s, to_timestamp(%s))",
            (replaces, _hash(token), person_id, csrf, now + max_age))
        return token, Session(_hash(token), person_id, csrf)

    async def find(self, token: str, now: float, idle: float) -> tuple[Session, float] | None:
        rows = await self.db.runQuery(
            "SELECT id, person_id, csrf_token, extract(epoch FROM last_seen_at)::float8"
            " FROM web_sessions WHERE id = %s AND revoked_at IS NULL"
            " AND expires_at > to_timestamp(%s) AND last_seen_at > to_timestamp(%s)",
            (_hash(token), now, now - idle))
        if not rows:
            return None
        session_id, person_id, csrf, last_seen = rows[0]
        return Session(session_id, person_id, csrf), last_seen

    def touch(self, session_id: str):
        return self.db.runOperation(
            "UPDATE web_sessions SET last_seen_at = now() WHERE id = %s", (session_id,))

    def revoke(self, session_id: str):
        return self.db.runOperation(
            "UPDATE web_sessions SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
            (session_id,))


class Sessions:
    """
    What routes use:

        session = await sessions.current(request)      # or None
        await sessions.start(request, person_id)        # sign in (rotates)
        await sessions.end(request)                     # sign out
        sessions.check_csrf(request, session)           # on every POST form
    """

    def __init__(self, config, store: SessionStore, clock=time.time):
        self.store = store
        self.clock = clock
        self.idle = config["web"]["session_idle"]
        self.max_age = config["web"]["session_max"]
        self.secure = config["http"]["public_url"].startswith("https://")
        self.cookie_name = b"__Host-emaild_session" if self.secure else b"emaild_session"

    def _token(self, request) -> str | None:
        raw = request.getCookie(self.cookie_name)
        if not raw:
            return None
        try:
            token = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        return token if 20 <= len(token) <= 100 else None

    def _set_cookie(self, request, token: str, max_age: int) -> None:
        attributes = [f"{self.cookie_name.decode()}={token}", "Path=/", "HttpOnly",
                      f"Max-Age={max_age}"]
        if self.secure:
            attributes += ["Secure", "SameSite=None", "Partitioned"]
        else:
            attributes += ["SameSite=Lax"]
        request.responseHeaders.addRawHeader(b"Set-Cookie", "; ".join(attributes).encode("ascii"))

    async def current(self, request) -> Session | None:
        """
        The request's valid session, or None (no cookie, unknown, revoked,
        idle too long, or past its absolute expiry).
        """
        cached = getattr(request, "_emaild_session", False)
        if cached is not False:
            return cached
        token = self._token(request)
        found = None
        if token is not None:
            now = self.clock()
            found = await self.store.find(token, now, self.idle)
            if found is not None and now - found[1] > TOUCH_INTERVAL:
                await self.store.touch(found[0].id)
        request._emaild_session = found[0] if found else None
        return request._emaild_session

    async def start(self, request, person_id: int) -> Session:
        """
        Sign C{person_id} in: a new session and cookie; the browser's
        previous session, if any, is revoked.
        """
        token = self._token(request)
        token, session = await self.store.create(
            person_id, self.clock(), self.max_age, _hash(token) if token else None)
        self._set_cookie(request, token, int(self.max_age))
        request._emaild_session = session
        return session

    async def end(self, request) -> None:
        token = self._token(request)
        if token:
            await self.store.revoke(_hash(token))
        self._set_cookie(request, "", 0)
        request._emaild_session = None

    @staticmethod
    def check_csrf(request, session: Session | None) -> bool:
        """
        Whether the POSTed C{csrf_token} field matches the session's.
        """
        if session is None:
            return False
        sent = (request.args.get(b"csrf_token") or [b""])[0]
        return hmac.compare_digest(sent, session.csrf_token.encode("ascii"))
