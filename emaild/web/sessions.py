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
from typing import Iterable

import attrs

from emaild.db.arrays import float_array, text_array

#: write last_seen_at at most this often (not on every request)
TOUCH_INTERVAL = 60.0


@attrs.frozen
class Session:
    #: SHA-256 of the cookie token (the row's key)
    id: str
    person_id: int
    csrf_token: str


@attrs.frozen
class FoundSession:
    """
    A live session and when it was last seen (seconds since the epoch).
    """

    session: Session
    last_seen: float


@attrs.frozen
class NewSession:
    """
    A session about to start: its cookie token, the row's values, and the
    browser's previous session (revoked when this one starts).
    """

    #: goes in the cookie only; the row is keyed by its hash
    token: str
    #: SHA-256 of C{token}
    id: str
    csrf_token: str
    #: seconds since the epoch
    expires_at: float
    #: hash of the browser's previous session token, or None
    replaces: str | None

    @classmethod
    def make(cls, now: float, max_age: float, replaces: str | None) -> "NewSession":
        token = secrets.token_urlsafe(32)
        return cls(token, _hash(token), secrets.token_urlsafe(24), now + max_age, replaces)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class SessionStore:
    """
    The web part's C{web_sessions} table.
    """

    def __init__(self, db):
        self.db = db

    @staticmethod
    def start_ctes(new: NewSession, person: str) -> tuple[str, dict]:
        """
        SQL that starts C{new} for the person of C{person} (the name of a
        CTE with a C{person_id} column and at most one row) and revokes the
        session it replaces, only if C{person} has a row: two CTEs, to
        put in a larger statement's C{WITH} so that signing in costs no
        round trip of its own (see L{emaild.links.store.LinkStore.use_many}).
        Its named parameters start with C{session_}.
        """
        sql = ("session_revoked AS (UPDATE web_sessions SET revoked_at = now()"
               "   WHERE id = %(session_replaces)s AND revoked_at IS NULL"
               f"   AND EXISTS (SELECT FROM {person})),"
               " session_started AS (INSERT INTO web_sessions"
               "   (id, person_id, csrf_token, expires_at)"
               "   SELECT %(session_id)s, person_id, %(session_csrf)s,"
               f"     to_timestamp(%(session_expires)s) FROM {person})")
        return sql, {"session_replaces": new.replaces, "session_id": new.id,
                     "session_csrf": new.csrf_token, "session_expires": new.expires_at}

    @staticmethod
    def start_many_ctes(news: list[NewSession], used: str) -> tuple[str, dict]:
        """
        L{start_ctes} for several sign-ins in one statement: C{news[k]}
        starts for the person of the row of C{used} (a CTE with columns
        C{n} and C{person_id}) whose C{n} is C{k + 1}, and only if there is
        one (see L{emaild.links.store.LinkStore.use_many}).
        """
        sql = ("session_new AS (SELECT * FROM unnest(%(session_ids)s::text[],"
               "   %(session_csrfs)s::text[], %(session_expires)s::float8[],"
               "   %(session_replaces)s::text[]) WITH ORDINALITY AS s(id, csrf, expires, replaces, n)),"
               " session_revoked AS (UPDATE web_sessions SET revoked_at = now()"
               f"   FROM (SELECT s.replaces FROM session_new s JOIN {used} u ON u.n = s.n"
               "     ORDER BY s.replaces) r"  # lock in id order, as the links are
               "   WHERE web_sessions.id = r.replaces AND web_sessions.revoked_at IS NULL),"
               " session_started AS (INSERT INTO web_sessions"
               "   (id, person_id, csrf_token, expires_at)"
               "   SELECT s.id, u.person_id, s.csrf, to_timestamp(s.expires)"
               f"   FROM session_new s JOIN {used} u ON u.n = s.n)")
        # each list as one array literal (emaild.db.arrays)
        return sql, {"session_ids": text_array([new.id for new in news]),
                     "session_csrfs": text_array([new.csrf_token for new in news]),
                     "session_expires": float_array([new.expires_at for new in news]),
                     "session_replaces": text_array([new.replaces for new in news])}

    async def create(self, person_id: int, now: float, max_age: float, replaces: str | None):
        """
        Start a session for C{person_id}: C{(cookie token, Session)}.
        """
        new = NewSession.make(now, max_age, replaces)
        return new.token, await self.insert(person_id, new)

    async def insert(self, person_id: int, new: NewSession) -> Session:
        # one statement (revoke the old session and insert the new one)
        ctes, params = self.start_ctes(new, "person")
        await self.db.runOperation(
            f"WITH person AS (SELECT %(person_id)s::bigint AS person_id), {ctes} SELECT",
            {**params, "person_id": person_id})
        return Session(new.id, person_id, new.csrf_token)

    async def find(self, token: str, now: float, idle: float) -> FoundSession | None:
        rows = await self.db.runQuery(
            "SELECT id, person_id, csrf_token, extract(epoch FROM last_seen_at)::float8"
            " FROM web_sessions WHERE id = %s AND revoked_at IS NULL"
            " AND expires_at > to_timestamp(%s) AND last_seen_at > to_timestamp(%s)",
            (_hash(token), now, now - idle))
        if not rows:
            return None
        session_id, person_id, csrf, last_seen = rows[0]
        return FoundSession(Session(session_id, person_id, csrf), last_seen)

    async def seen_since(self, person_ids: Iterable[int], seconds: float) -> set[int]:
        """
        Those of C{person_ids} with a live session that made a request in
        the last C{seconds} (database time).
        """
        wanted = sorted(set(person_ids))
        if not wanted:
            return set()
        rows = await self.db.runQuery(
            "SELECT DISTINCT person_id FROM web_sessions WHERE person_id = ANY(%s)"
            " AND revoked_at IS NULL AND last_seen_at > now() - make_interval(secs => %s)",
            (wanted, float(seconds)))
        return {row[0] for row in rows}

    async def touch(self, session_id: str) -> None:
        await self.db.runOperation(
            "UPDATE web_sessions SET last_seen_at = now() WHERE id = %s", (session_id,))

    async def revoke(self, session_id: str) -> None:
        await self.db.runOperation(
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
        if hasattr(request, "_emaild_session"):
            return request._emaild_session
        token = self._token(request)
        found = None
        if token is not None:
            now = self.clock()
            found = await self.store.find(token, now, self.idle)
            if found is not None and now - found.last_seen > TOUCH_INTERVAL:
                await self.store.touch(found.session.id)
        request._emaild_session = found.session if found else None
        return request._emaild_session

    async def start(self, request, person_id: int) -> Session:
        """
        Sign C{person_id} in: a new session and cookie; the browser's
        previous session, if any, is revoked.
        """
        new = self.new(request)
        await self.store.insert(person_id, new)
        return self.started(request, new, person_id)

    def new(self, request) -> NewSession:
        """
        A new session for this browser, to start with L{SessionStore.insert}
        or L{SessionStore.start_ctes}, then L{started}.
        """
        token = self._token(request)
        return NewSession.make(self.clock(), self.max_age, _hash(token) if token else None)

    def started(self, request, new: NewSession, person_id: int) -> Session:
        """
        C{new} was stored for C{person_id}: give the browser its cookie.
        """
        self._set_cookie(request, new.token, int(self.max_age))
        request._emaild_session = Session(new.id, person_id, new.csrf_token)
        return request._emaild_session

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


async def start_session_txn(cursor, person_id: int, new: NewSession) -> None:
    """
    L{SessionStore.insert} inside the caller's transaction (an LTI 1.3
    launch starts its session in its sign-in transaction: one commit for
    the login state, the person and the session); then L{Sessions.started}.
    """
    ctes, params = SessionStore.start_ctes(new, "person")
    await cursor.execute(
        f"WITH person AS (SELECT %(person_id)s::bigint AS person_id), {ctes} SELECT",
        {**params, "person_id": person_id})
