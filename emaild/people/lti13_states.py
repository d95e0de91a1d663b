"""
The C{lti13_login_states} and C{lti13_nonces} tables: OIDC logins in
progress, and the nonces of accepted id_tokens.

A state is random (C{secrets}), stored as its SHA-256, lives
C{[lti13] state_ttl} (10 minutes by default) and is used once: L{use_txn}
(a launch whose browser has the state cookie) and L{consume} (one that will
be checked through the platform's storage) mark it used in the same
statement that reads it, so two posts of one launch cannot both pass.
L{use_txn} runs as the first statement of the sign-in transaction and also
records the nonce and takes the identity's lock: a launch's state, nonce,
person and session are committed together, in one round trip more than the
person and session alone.  Rows older than L{KEEP} after their expiry are
deleted now and then.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable

import attrs

#: delete old rows at most this often (seconds) per process
SWEEP_INTERVAL = 300.0
#: states are kept this long after they expire (so a late launch hears
#: "expired" rather than "unknown"); nonces this long after they were seen
KEEP = 3600.0


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


@attrs.frozen
class NewLogin:
    """
    A login about to be redirected to the platform.
    """

    state: str
    nonce: str
    #: what the browser keeps (cookie or platform storage)
    browser_value: str

    @classmethod
    def make(cls) -> NewLogin:
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32),
                   secrets.token_urlsafe(32))


@attrs.frozen
class LoginState:
    platform: str
    nonce: str
    browser_hash: str
    storage_target: str | None


@attrs.frozen
class LoginProof:
    """
    What a launch whose id_token was verified must show for its login
    state to be used up (L{LoginStates.use_txn}).
    """

    state: str
    #: the state cookie the browser sent
    browser_value: str
    #: the platform the id_token was verified for, and its claims
    platform: str
    issuer: str
    nonce: str
    #: the identity lock the sign-in takes (L{emaild.people.lti13_store.identity_lock})
    lock: str


class StateProblem(Exception):
    """
    The state cannot be used: C{reason} is C{unknown}, C{used} or
    C{expired}; from L{LoginStates.use_txn} also C{browser} (another
    browser began the login), C{platform} (the login was for another
    platform), C{nonce} (the id_token carries another nonce) or C{replayed}
    (the nonce was recorded before).
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class LoginStates:
    def __init__(self, db, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.db = db
        self.ttl = ttl
        self.clock = clock
        self._last_sweep: float | None = None

    async def create(self, login: NewLogin, platform: str, storage_target: str | None) -> None:
        await self.db.runOperation(
            "INSERT INTO lti13_login_states (state_hash, nonce, platform, browser_hash,"
            " storage_target, expires_at)"
            " VALUES (%s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
            (digest(login.state), login.nonce, platform, digest(login.browser_value),
             storage_target, self.ttl))
        await self._maybe_sweep()

    async def consume(self, state: str) -> LoginState:
        """
        Mark the state used and return what was stored with it.

        @raise StateProblem: unknown, already used, or expired.
        """
        rows = await self.db.runQuery(
            "UPDATE lti13_login_states SET used_at = now()"
            " WHERE state_hash = %s AND used_at IS NULL AND expires_at > now()"
            " RETURNING platform, nonce, browser_hash, storage_target", (digest(state),))
        if rows:
            return LoginState(*rows[0])
        rows = await self.db.runQuery(
            "SELECT used_at IS NOT NULL FROM lti13_login_states WHERE state_hash = %s",
            (digest(state),))
        raise StateProblem("unknown" if not rows else "used" if rows[0][0] else "expired")

    async def use_txn(self, cursor, proof: LoginProof) -> None:
        """
        In the sign-in transaction, one statement: mark the login state
        used, only for the browser, platform and nonce it was made for;
        record the nonce; and take the identity's advisory lock (after the
        row lock, so two posts of one launch queue on the state row).

        @raise StateProblem: the state cannot be used (the caller's
            transaction then rolls back: nothing is written).
        """
        state_hash = digest(proof.state)
        await cursor.execute(
            "WITH used AS (UPDATE lti13_login_states SET used_at = now()"
            "   WHERE state_hash = %(state)s AND used_at IS NULL AND expires_at > now()"
            "   AND storage_target IS NULL AND browser_hash = %(browser)s"
            "   AND platform = %(platform)s AND nonce = %(nonce)s RETURNING 1),"
            " burnt AS (INSERT INTO lti13_nonces (issuer, nonce)"
            "   SELECT %(issuer)s, %(nonce)s FROM used ON CONFLICT DO NOTHING RETURNING 1),"
            " outcome AS (SELECT EXISTS (SELECT FROM used) AS used,"
            "   EXISTS (SELECT FROM burnt) AS burnt)"
            # the lock only once the row is ours (CASE evaluates its condition first)
            " SELECT used, burnt, CASE WHEN burnt THEN"
            "   pg_advisory_xact_lock(hashtextextended(%(lock)s, 0)) END FROM outcome",
            {"state": state_hash, "browser": digest(proof.browser_value),
             "platform": proof.platform, "nonce": proof.nonce, "issuer": proof.issuer,
             "lock": proof.lock})
        used, burnt, _ = cursor.fetchone()
        if burnt:
            return
        if used:
            raise StateProblem("replayed")
        await cursor.execute(
            "SELECT used_at IS NOT NULL, expires_at <= now(),"
            " storage_target IS NULL AND browser_hash = %s, platform = %s, nonce = %s"
            " FROM lti13_login_states WHERE state_hash = %s",
            (digest(proof.browser_value), proof.platform, proof.nonce, state_hash))
        row = cursor.fetchone()
        if row is None:
            raise StateProblem("unknown")
        was_used, expired, same_browser, same_platform, same_nonce = row
        raise StateProblem("used" if was_used else "expired" if expired
                           else "browser" if not same_browser
                           else "platform" if not same_platform
                           else "nonce" if not same_nonce else "used")

    async def hold(self, state: str, launch: dict) -> None:
        """
        Keep a verified launch with its (used) state until the browser
        proves, through the platform's storage, that it began the login.
        """
        await self.db.runOperation(
            "UPDATE lti13_login_states SET pending_launch = %s::jsonb WHERE state_hash = %s",
            (json.dumps(launch), digest(state)))

    async def confirm(self, state: str, browser_value: str) -> dict | None:
        """
        The launch held for C{state}, once: only with the browser value the
        login gave out, before the state expires.  None otherwise.
        """
        rows = await self.db.runQuery(
            # (RETURNING gives the new row: the launch is kept until the row is swept)
            "UPDATE lti13_login_states SET confirmed_at = now()"
            " WHERE state_hash = %s AND browser_hash = %s AND pending_launch IS NOT NULL"
            " AND confirmed_at IS NULL AND expires_at > now()"
            " RETURNING pending_launch", (digest(state), digest(browser_value)))
        if not rows:
            return None
        value = rows[0][0]
        return json.loads(value) if isinstance(value, str) else value

    async def use_nonce(self, issuer: str, nonce: str) -> bool:
        """
        Record an accepted id_token's nonce; False when it was seen before.
        """
        rows = await self.db.runQuery(
            "INSERT INTO lti13_nonces (issuer, nonce) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING RETURNING 1", (issuer, nonce))
        return bool(rows)

    async def _maybe_sweep(self) -> None:
        now = self.clock()
        if self._last_sweep is not None and now - self._last_sweep < SWEEP_INTERVAL:
            return
        self._last_sweep = now
        await self.db.runOperation(
            "DELETE FROM lti13_login_states WHERE expires_at < now() - make_interval(secs => %s)",
            (KEEP,))
        await self.db.runOperation(
            "DELETE FROM lti13_nonces WHERE seen_at < now() - make_interval(secs => %s)",
            (KEEP,))
