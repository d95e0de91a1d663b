"""
The C{lti13_login_states} and C{lti13_nonces} tables: OIDC logins in
progress, and the nonces of accepted id_tokens.

A state is random (C{secrets}), stored as its SHA-256, lives
C{[lti13] state_ttl} (10 minutes by default) and is used once: L{consume}
marks it used in the same statement that reads it, so two posts of one
launch cannot both pass.  Rows older than a day are deleted now and then.
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


class StateProblem(Exception):
    """
    The state cannot be used: C{reason} is C{unknown}, C{used} or C{expired}.
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
