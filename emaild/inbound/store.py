"""
The inbound part's tables: C{inbound_messages}, C{inbound_recipients} and
C{bounces}.

A message is stored, with one row per accepted recipient saying what that
address means, before the SMTP server answers 250.  The relay processor then
takes one recipient row at a time (C{FOR UPDATE SKIP LOCKED}, so several
emaild processes can share the work) and finishes it in the same
transaction that queues its outbound copies: a crash in between leaves the
row C{received} and the work is redone exactly once.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Sequence

import attrs
from psycopg2 import Binary


#: NOTIFY channel that wakes the relay processor when mail arrived
INBOUND_CHANNEL = "emaild_inbound"
RELAY, UNSUBSCRIBE, BOUNCE = "relay", "unsubscribe", "bounce"
TERMINAL = ("done", "ignored", "failed")


@attrs.frozen
class Recipient:
    """
    What an accepted RCPT address means (the server keeps one per RCPT).
    """

    address: str
    purpose: str
    group_id: int | None = None
    #: relay: the member whose reply address it is; bounce: whom the
    #: bounced message was for
    person_id: int | None = None
    link_id: int | None = None
    outbox_id: int | None = None
    #: relay: the envelope sender already proved it is that member
    sender_verified: bool = False
    #: relay: the member's address and name, for the From check
    member_email: str | None = None


@attrs.frozen
class Pending:
    """
    A recipient row to process, with its message.
    """

    id: int
    message_id: int
    address: str
    purpose: str
    group_id: int | None
    person_id: int | None
    link_id: int | None
    outbox_id: int | None
    attempts: int
    mail_from: str
    raw: bytes


class InboundStore:
    def __init__(self, db):
        self.db = db

    def receive(self, *, peer: str, helo: str, tls: bool, mail_from: str,
                recipients: Sequence[Recipient], raw: bytes, authentication: str = ""):
        """
        Store a message and its recipients in one transaction and wake the
        processor.  Fires with the message id.  C{authentication}: the
        Authentication-Results value of a checked post.
        """

        # One statement, so one round trip and its own transaction (the
        # pool's connections are in autocommit mode): the message, its
        # recipients and the NOTIFY (sent on commit) are stored together or
        # not at all.  Data-modifying CTEs always run to completion.
        d = self.db.runQuery(
            "WITH m AS (INSERT INTO inbound_messages (peer, helo, tls, mail_from, size, raw,"
            "   authentication) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id),"
            " r AS (INSERT INTO inbound_recipients (message_id, address, purpose, group_id,"
            "   person_id, link_id, outbox_id)"
            "   SELECT m.id, a, p, g, pe, l, o FROM m, unnest(%s::text[], %s::text[],"
            "     %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[]) AS v(a, p, g, pe, l, o))"
            " SELECT m.id, pg_notify(%s, '') FROM m",
            (peer, helo, tls, mail_from, len(raw), Binary(raw), authentication,
             [r.address for r in recipients], [r.purpose for r in recipients],
             [r.group_id for r in recipients], [r.person_id for r in recipients],
             [r.link_id for r in recipients], [r.outbox_id for r in recipients],
             INBOUND_CHANNEL))
        return d.addCallback(lambda rows: rows[0][0])

    def process_next(self, handle: Callable[[Any, Pending], Awaitable[tuple[str, str]]]):
        """
        Take the oldest unprocessed recipient row no other process holds,
        run C{await handle(cursor, pending)} in the same transaction, and
        record the C{(state, reason)} it returns.  Fires with the row id, or
        None when there was nothing to do.  If C{handle} raises, nothing it
        did is kept and the row stays C{received} (see L{fail}).
        """

        async def run(cursor):
            await cursor.execute(
                "SELECT r.id, r.message_id, r.address, r.purpose, r.group_id, r.person_id,"
                " r.link_id, r.outbox_id, r.attempts, m.mail_from, m.raw"
                " FROM inbound_recipients r JOIN inbound_messages m ON m.id = r.message_id"
                " WHERE r.state = 'received' ORDER BY r.id LIMIT 1 FOR UPDATE OF r SKIP LOCKED")
            row = cursor.fetchone()
            if row is None:
                return None
            pending = Pending(*row[:-1], bytes(row[-1]))
            state, reason = await handle(cursor, pending)
            await _finish(cursor, pending.id, state, reason)
            return pending.id

        return self.db.transaction(run)

    async def fail(self, recipient_id: int, reason: str, max_attempts: int) -> str:
        """
        Count a failed attempt at a row; after C{max_attempts} it is
        C{failed} with the reason, so a message that crashes the processor
        cannot block the queue or loop for ever.  Returns the row's state.
        """
        rows = await self.db.runQuery(
            "UPDATE inbound_recipients SET attempts = attempts + 1,"
            "  state = CASE WHEN attempts + 1 >= %s THEN 'failed' ELSE state END,"
            "  reason = %s, processed_at = CASE WHEN attempts + 1 >= %s THEN now() END"
            " WHERE id = %s AND state = 'received' RETURNING state",
            (max_attempts, reason, max_attempts, recipient_id))
        return rows[0][0] if rows else "gone"

    async def counts(self) -> dict[str, int]:
        rows = await self.db.runQuery(
            "SELECT state, count(*) FROM inbound_recipients GROUP BY state")
        counts = {state: 0 for state in ("received", "held", *TERMINAL)}
        counts.update(dict(rows))
        return counts

    async def recent(self, states: Sequence[str] = ("received", *TERMINAL), limit: int = 50,
                     message_id: int | None = None) -> list[tuple]:
        """
        The newest recipient rows in C{states} (or those of one message):
        (message id, received at, mail from, address, purpose, state,
        reason, size, authentication).
        """
        rows = await self.db.runQuery(
            "SELECT m.id, m.received_at, m.mail_from, r.address, r.purpose, r.state,"
            " r.reason, m.size, m.authentication"
            " FROM inbound_recipients r JOIN inbound_messages m ON m.id = r.message_id"
            " WHERE r.state = ANY(%s) AND (%s::bigint IS NULL OR m.id = %s)"
            " ORDER BY r.id DESC LIMIT %s", (list(states), message_id, message_id, limit))
        return [tuple(r) for r in rows]

    async def recipients_of(self, message_id: int) -> list[tuple[str, str, str, str | None]]:
        """
        (address, purpose, state, reason) of each recipient of a message.
        """
        rows = await self.db.runQuery(
            "SELECT address, purpose, state, reason FROM inbound_recipients"
            " WHERE message_id = %s ORDER BY id", (message_id,))
        return [tuple(r) for r in rows]

    # -- limits checked before anything is stored ----------------------------
    async def recent_posts(self, group_id: int, person_id: int, *, seconds: float,
                           at_most: int) -> int:
        """
        How many messages the member stored as posts to the group in the
        last C{seconds} (counting stops at C{at_most}).
        """
        rows = await self.db.runQuery(
            "SELECT count(*) FROM (SELECT 1 FROM inbound_recipients r"
            "  JOIN inbound_messages m ON m.id = r.message_id"
            "  WHERE r.purpose = 'relay' AND r.group_id = %s AND r.person_id = %s"
            "  AND m.received_at > now() - make_interval(secs => %s)"
            "  ORDER BY r.message_id DESC LIMIT %s) recent",
            (group_id, person_id, seconds, at_most))
        return rows[0][0]

    async def record_refusal(self, *, reason: str, subject: str, address: str,
                             mail_from: str, reply: str,
                             group_id: int | None = None, person_id: int | None = None) -> None:
        """
        Note an attempt refused before anything was stored: one row per
        (reason, subject, hour), counting the attempts.
        """
        await self.db.runOperation(
            "INSERT INTO inbound_refusals (reason, subject, hour, group_id, person_id, address,"
            "  mail_from, reply) VALUES (%s, %s, date_trunc('hour', now()), %s, %s, %s, %s, %s)"
            " ON CONFLICT (reason, subject, hour) DO UPDATE SET attempts ="
            "  inbound_refusals.attempts + 1, last_at = now(), address = EXCLUDED.address,"
            "  mail_from = EXCLUDED.mail_from, reply = EXCLUDED.reply",
            (reason, subject, group_id, person_id, address, mail_from, reply))

    async def recent_refusals(self, limit: int = 20) -> list[Refusal]:
        """The newest refusal records, newest first."""
        rows = await self.db.runQuery(
            "SELECT reason, subject, address, mail_from, reply, attempts, first_at,"
            " last_at FROM inbound_refusals ORDER BY last_at DESC, id DESC LIMIT %s", (limit,))
        return [Refusal(*row) for row in rows]


@attrs.frozen
class Refusal:
    """Attempts refused for one reason about one subject in one hour."""

    reason: str
    subject: str
    address: str
    mail_from: str
    reply: str
    attempts: int
    first_at: Any
    last_at: Any


async def _finish(cursor, recipient_id: int, state: str, reason: str) -> None:
    await cursor.execute(
        "UPDATE inbound_recipients SET state = %s, reason = %s, processed_at = now(),"
        " attempts = attempts + 1 WHERE id = %s", (state, reason, recipient_id))


# -- bounces (inside the processor's transaction) ----------------------------
async def record_bounce(cursor, *, address: str, outbox_id: int | None, person_id: int | None,
                        hard: bool, status: str, diagnostic: str) -> int:
    """
    Record a bounce; returns the address's number of hard bounces so far.
    """
    address = address.lower()
    await cursor.execute(
        "INSERT INTO bounces (address, outbox_id, person_id, hard, status, diagnostic)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (address, outbox_id, person_id, hard, status, diagnostic[:1000]))
    await cursor.execute("SELECT count(*) FROM bounces WHERE address = %s AND hard", (address,))
    return cursor.fetchone()[0]
