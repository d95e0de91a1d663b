"""
The outbound part's tables: C{outbox}, C{outbox_attempts}, C{send_buckets},
C{send_daily_usage}, C{suppressions} and C{mail_optouts}.  Nothing else
touches them: other parts read them through L{OutboxStore} and write them
through it or through the C{*_txn} functions (which run inside the caller's
transaction): the bounce and suppression ones at the bottom, the sender's
claim and record in L{emaild.outbound.claim_store}, queueing in
L{emaild.outbound.enqueue_store}.

Times passed in (C{now}) are seconds since the epoch on the sender's clock,
so tests can drive the queue with a L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import datetime
from typing import Iterable, Mapping, Sequence

import attrs

from emaild.config import QoSClass
from emaild.db.database import Database, notify
from emaild.outbound.claim_store import (
    OUTBOX_CHANNEL,
    RateLimits,
    claim_txn,
    record_txn,
)
from emaild.outbound.compose import Rendered
from emaild.outbound.enqueue_store import insert_messages_txn
from emaild.outbound.kinds import Scope
from emaild.outbound.policy import Decision

STATES = ("queued", "sending", "sent", "failed", "suppressed")


@attrs.frozen
class OptOut:
    person_id: int
    scope: Scope
    #: web, one-click, mailto, preferences
    source: str
    #: seconds since the epoch
    created_at: float


@attrs.frozen
class Failure:
    """
    A message the sender gave up on.
    """

    outbox_id: int
    recipient: str
    template: str
    qos: str
    attempts: int
    reason: str | None
    finished_at: datetime.datetime | None


@attrs.frozen
class MessageState:
    """
    Where one outbox message stands; C{attempts}: the attempts counted
    against its retry budget.
    """

    state: str
    reason: str | None
    attempts: int
    recipient: str


@attrs.frozen
class Attempt:
    """
    One delivery attempt of a message (or a bounce reported after it).
    """

    at: datetime.datetime
    outcome: str
    code: int | None
    reply: str | None


@attrs.frozen
class Suppression:
    """
    An address nothing is sent to, and why.
    """

    address: str
    reason: str | None
    created_at: datetime.datetime | None


@attrs.frozen
class BouncedMessage:
    """
    The message sent with a bounce address.
    """

    outbox_id: int
    recipient: str
    person_id: int | None


@attrs.frozen
class BatchFailure:
    """
    A failed message of a batch, with the last reply the relay gave.
    """

    outbox_id: int
    person_id: int | None
    recipient: str
    attempts: int
    reason: str | None
    finished_at: datetime.datetime | None
    last_reply: str | None


class OutboxStore:
    def __init__(self, db: Database):
        self.db = db

    # -- enqueue ---------------------------------------------------------------
    async def enqueue(self, template: str, qos: QoSClass, messages: Sequence[Rendered],
                      batch: str | None = None):
        """
        Insert one row per message, in one transaction, and wake the senders.
        Fires with the new ids in order.
        """
        return await self.db.transaction(insert_messages_txn, template, qos, messages, batch)

    # -- claim -----------------------------------------------------------------
    async def claim(self, owner: str, now: float, limit: int, limits: RateLimits,
                    classes: Mapping[str, QoSClass]):
        """
        Take up to C{limit} due messages for C{owner}, as many as the shared
        token buckets and the daily quota allow, highest priority first;
        mark them C{sending} under a lease.  Messages to suppressed addresses,
        and unsubscribable messages whose person opted out of their kind or
        of all mail (in their course or in every course), are marked
        C{suppressed} instead, with the reason.  Fires with a L{ClaimResult}.
        """
        return await self.db.transaction(claim_txn, owner, now, limit, limits, classes)

    # -- results ---------------------------------------------------------------
    async def record(self, owner: str, decisions: Sequence[Decision], now: float,
                     throttled: bool = False, pause_until: float = 0.0):
        """
        Apply the decisions (one transaction), log every attempt, count the
        day's sent recipients, and slow or pause the relay bucket when the
        relay throttled us.  Fires with the seconds from enqueue to now of
        each message recorded as sent (for the latency metric).
        """
        return await self.db.transaction(record_txn, owner, decisions, now, throttled,
                                         pause_until)

    async def recover_leases(self, now: float):
        """
        Put rows whose lease ran out (their sender died or hung) back in the
        queue, logging why; fires with how many.  The attempt does not count:
        the message may or may not have reached the relay.
        """

        async def recover(cursor):
            await cursor.execute(
                "UPDATE outbox SET state = 'queued', next_attempt_at = to_timestamp(%s),"
                " reason = 'lease of ' || lease_owner || ' expired; requeued',"
                " lease_owner = NULL, lease_until = NULL, updated_at = now()"
                " WHERE id IN (SELECT id FROM outbox WHERE state = 'sending'"
                "   AND lease_until < to_timestamp(%s) FOR UPDATE SKIP LOCKED)"
                " RETURNING id",
                (now, now),
            )
            ids = [r[0] for r in cursor.fetchall()]
            if ids:
                await cursor.execute(
                    "INSERT INTO outbox_attempts (outbox_id, outcome, reply)"
                    " SELECT unnest(%s::bigint[]), 'expired',"
                    " 'lease expired while sending; delivery unknown, requeued'",
                    (ids,),
                )
                await notify(cursor, OUTBOX_CHANNEL)
            return len(ids)

        return await self.db.transaction(recover)

    async def renew_leases(self, owner: str, ids: Sequence[int], now: float,
                           lease: float) -> None:
        """
        Extend the leases of rows this process is still sending, so a slow
        relay never makes a live process's messages look abandoned.
        """
        await self.db.runOperation(
            "UPDATE outbox SET lease_until = to_timestamp(%s)"
            " WHERE id = ANY(%s) AND state = 'sending' AND lease_owner = %s",
            (now + lease, list(ids), owner),
        )

    async def release(self, owner: str, ids: Iterable[int], reason: str) -> None:
        """
        Give claimed rows back to the queue without burning an attempt.
        """
        ids = list(ids)
        if ids:
            await self.db.runOperation(
                "UPDATE outbox SET state = 'queued', lease_owner = NULL, lease_until = NULL,"
                " reason = %s, updated_at = now()"
                " WHERE id = ANY(%s) AND state = 'sending' AND lease_owner = %s",
                (reason, ids, owner),
            )

    async def next_due(self) -> float | None:
        """
        When the earliest queued message becomes due (epoch seconds), or None.
        """
        rows = await self.db.runQuery(
            "SELECT extract(epoch FROM min(next_attempt_at)) FROM outbox WHERE state = 'queued'")
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    # -- looking things up ---------------------------------------------------------
    async def counts(self) -> dict[str, dict[str, int]]:
        """
        {state: {qos: count}} with every state present.
        """
        rows = await self.db.runQuery(
            "SELECT state, qos, count(*) FROM outbox GROUP BY state, qos ORDER BY state, qos")
        result: dict[str, dict[str, int]] = {state: {} for state in STATES}
        for state, qos, count in rows:
            result[state][qos] = count
        return result

    async def batch_counts(self, batch: str) -> dict[str, dict[str, int]]:
        """
        Like L{counts}, for the rows queued with this batch label only.
        """
        rows = await self.db.runQuery(
            "SELECT state, qos, count(*) FROM outbox WHERE batch = %s GROUP BY state, qos",
            (batch,))
        result: dict[str, dict[str, int]] = {state: {} for state in STATES}
        for state, qos, count in rows:
            result[state][qos] = count
        return result

    async def batch_failures(self, batch: str, limit: int = 50) -> list[BatchFailure]:
        """
        The failed messages of the batch with their last reply, newest first.
        """
        rows = await self.db.runQuery(
            "SELECT o.id, o.person_id, o.recipient, o.attempts, o.reason, o.finished_at,"
            "  (SELECT coalesce(a.code::text || ' ', '') || a.reply FROM outbox_attempts a"
            "   WHERE a.outbox_id = o.id ORDER BY a.id DESC LIMIT 1)"
            " FROM outbox o WHERE o.batch = %s AND o.state = 'failed'"
            " ORDER BY o.finished_at DESC NULLS LAST, o.id DESC LIMIT %s", (batch, limit))
        return [BatchFailure(*row) for row in rows]

    async def failed_people(self, batch: str, retries: Sequence[str] = ()) -> list[int]:
        """
        People whose message in C{batch} failed, less those a message in one
        of the C{retries} batches reached (or is still trying to).
        """
        rows = await self.db.runQuery(
            "SELECT DISTINCT o.person_id FROM outbox o"
            " WHERE o.batch = %s AND o.state = 'failed' AND o.person_id IS NOT NULL"
            "   AND NOT EXISTS (SELECT 1 FROM outbox r WHERE r.batch = ANY(%s)"
            "     AND r.person_id = o.person_id AND r.state <> 'failed')"
            " ORDER BY 1", (batch, list(retries)))
        return [row[0] for row in rows]

    async def suppression_count(self) -> int:
        rows = await self.db.runQuery("SELECT count(*) FROM suppressions")
        return rows[0][0]

    async def failures(self, limit: int = 100) -> list[Failure]:
        """
        The most recent failures, newest first.
        """
        rows = await self.db.runQuery(
            "SELECT id, recipient, template, qos, attempts, reason, finished_at FROM outbox"
            " WHERE state = 'failed' ORDER BY finished_at DESC, id DESC LIMIT %s", (limit,))
        return [Failure(*row) for row in rows]

    async def history(self, outbox_id: int) -> tuple[MessageState | None, list[Attempt]]:
        """
        Where the message stands (None: no such message) and its attempts,
        oldest first.
        """
        row = await self.db.runQuery(
            "SELECT state, reason, attempts, recipient FROM outbox WHERE id = %s", (outbox_id,))
        attempts = await self.db.runQuery(
            "SELECT at, outcome, code, reply FROM outbox_attempts WHERE outbox_id = %s ORDER BY id",
            (outbox_id,))
        return (MessageState(*row[0]) if row else None), [Attempt(*a) for a in attempts]

    async def suppressions(self, addresses: Iterable[str] | None = None) -> list[Suppression]:
        """
        The suppressed addresses (nothing is sent to them), newest first;
        with C{addresses}, only those among them (compared
        case-insensitively; the table holds them lower-cased).
        """
        if addresses is None:
            rows = await self.db.runQuery(
                "SELECT address, reason, created_at FROM suppressions"
                " ORDER BY created_at DESC, address")
            return [Suppression(*row) for row in rows]
        wanted = sorted({a.lower() for a in addresses if a})
        if not wanted:
            return []
        rows = await self.db.runQuery(
            "SELECT address, reason, created_at FROM suppressions WHERE address = ANY(%s)"
            " ORDER BY created_at DESC, address", (wanted,))
        return [Suppression(*row) for row in rows]

    async def by_bounce_address(self, envelope_from: str) -> BouncedMessage | None:
        """
        The message sent with this bounce address, or None.
        """
        return await self.db.transaction(bounced_message_txn, envelope_from)

    async def suppress(self, address: str, reason: str) -> None:
        await self.db.transaction(suppress_address_txn, address, reason)

    # -- opt-outs (mail_optouts) ---------------------------------------------------
    async def add_optout(self, person_id: int, scope: Scope, source: str) -> bool:
        """
        Turn off the mail in C{scope} for C{person_id}; fires with whether
        that was new (an existing opt-out keeps its source and date).
        """
        rows = await self.db.runQuery(
            "INSERT INTO mail_optouts (person_id, course_id, kind, source) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (person_id, coalesce(course_id, 0), coalesce(kind, '')) DO NOTHING"
            " RETURNING id",
            (person_id, scope.course_id, scope.kind, source),
        )
        return bool(rows)

    async def remove_optout(self, person_id: int, scope: Scope) -> bool:
        """
        Turn the mail in C{scope} back on (exactly that opt-out; broader or
        narrower ones stay); fires with whether there was one.
        """
        rows = await self.db.runQuery(
            "DELETE FROM mail_optouts WHERE person_id = %s"
            " AND coalesce(course_id, 0) = coalesce(%s, 0) AND coalesce(kind, '') = coalesce(%s, '')"
            " RETURNING id",
            (person_id, scope.course_id, scope.kind),
        )
        return bool(rows)

    async def opted_out(self, person_ids: Iterable[int], course_id: int | None,
                        kind: str) -> set[int]:
        """
        Those of C{person_ids} who turned C{kind} off for the course (or
        all mail in it, or all mail).
        """
        wanted = sorted(set(person_ids))
        if not wanted:
            return set()
        rows = await self.db.runQuery(
            "SELECT DISTINCT person_id FROM mail_optouts WHERE person_id = ANY(%s)"
            " AND (course_id IS NULL OR course_id = %s) AND (kind IS NULL OR kind = %s)",
            (wanted, course_id, kind))
        return {row[0] for row in rows}

    async def optouts(self, person_id: int) -> list[OptOut]:
        rows = await self.db.runQuery(
            "SELECT person_id, course_id, kind, source, extract(epoch FROM created_at)::float8"
            " FROM mail_optouts WHERE person_id = %s ORDER BY course_id NULLS FIRST, kind NULLS FIRST",
            (person_id,),
        )
        return [OptOut(r[0], Scope(r[1], r[2]), r[3], r[4]) for r in rows]

    async def set_optouts(self, person_id: int, managed: Iterable[Scope], off: Iterable[Scope],
                          source: str):
        """
        Of the C{managed} scopes (what a preferences form showed), make
        exactly those in C{off} opted out, in one transaction; opt-outs
        outside C{managed} are left alone, and ones that stay keep their
        source and date.  Fires with (added, removed) counts.
        """
        managed = set(managed)
        off = set(off) & managed
        on = managed - off

        async def apply(cursor):
            removed = added = 0
            if on:
                await cursor.execute(
                    "DELETE FROM mail_optouts m USING unnest(%s::bigint[], %s::text[]) AS v(c, k)"
                    " WHERE m.person_id = %s AND coalesce(m.course_id, 0) = coalesce(v.c, 0)"
                    "   AND coalesce(m.kind, '') = coalesce(v.k, '')",
                    ([s.course_id for s in on], [s.kind for s in on], person_id))
                removed = cursor.rowcount
            if off:
                await cursor.execute(
                    "INSERT INTO mail_optouts (person_id, course_id, kind, source)"
                    " SELECT %s, c, k, %s FROM unnest(%s::bigint[], %s::text[]) AS v(c, k)"
                    " ON CONFLICT (person_id, coalesce(course_id, 0), coalesce(kind, '')) DO NOTHING",
                    (person_id, source, [s.course_id for s in off], [s.kind for s in off]))
                added = cursor.rowcount
            return added, removed

        return await self.db.transaction(apply)


# -- inside a caller's transaction (the relay processor queues its copies in
# the transaction that finishes the inbound message) ---------------------------
async def bounced_message_txn(cursor, envelope_from: str) -> BouncedMessage | None:
    """
    The message sent with this bounce address, or None.
    """
    await cursor.execute(
        "SELECT id, recipient, person_id FROM outbox WHERE envelope_from = lower(%s)",
        (envelope_from,))
    row = cursor.fetchone()
    return BouncedMessage(*row) if row else None


async def record_bounced_txn(cursor, outbox_id: int, status: str, reply: str) -> None:
    """
    Keep a bounce reported after the relay accepted a message with its
    attempts, so the message's history shows it.
    """
    code = 550 if status.startswith("5") else 450 if status.startswith("4") else None
    await cursor.execute(
        "INSERT INTO outbox_attempts (outbox_id, outcome, code, reply) VALUES (%s, 'bounced', %s, %s)",
        (outbox_id, code, f"{status} {reply}".strip()[:2000]))


async def suppress_address_txn(cursor, address: str, reason: str) -> None:
    await cursor.execute(
        "INSERT INTO suppressions (address, reason) VALUES (lower(%s), %s)"
        " ON CONFLICT (address) DO UPDATE SET reason = EXCLUDED.reason",
        (address, reason))
