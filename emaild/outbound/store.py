"""
The outbound part's tables: C{outbox}, C{outbox_attempts}, C{send_buckets},
C{send_daily_usage}, C{suppressions} and C{mail_optouts}.  Nothing else
touches them: other parts read them through L{OutboxStore} and write them
through it or through the C{*_txn} functions at the bottom (which run inside
the caller's transaction).

Times passed in (C{now}) are seconds since the epoch on the sender's clock,
so tests can drive the queue with a L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import datetime
import itertools
from typing import Iterable, Mapping, Sequence

import attrs
from psycopg2 import Binary

from emaild.config import QoSClass
from emaild.db.database import Database, notify
from emaild.outbound.bucket import Bucket
from emaild.outbound.compose import Rendered
from emaild.outbound.kinds import Scope, optout_reason
from emaild.outbound.policy import Decision

#: NOTIFY channel that wakes idle senders when mail is queued
OUTBOX_CHANNEL = "emaild_outbox"
RELAY_BUCKET = "relay"
STATES = ("queued", "sending", "sent", "failed", "suppressed")


@attrs.frozen
class Claimed:
    id: int
    qos: str
    recipient: str
    envelope_from: str
    data: bytes
    #: attempts that counted before this claim
    attempts: int


@attrs.frozen
class ClaimResult:
    messages: list[Claimed]
    suppressed: int
    #: seconds until claiming again is worth it (tokens, quota or a pause);
    #: None when nothing is due
    retry_in: float | None


@attrs.frozen
class OptOut:
    person_id: int
    scope: Scope
    #: web, one-click, mailto, preferences
    source: str
    #: seconds since the epoch
    created_at: float


@attrs.frozen
class RateLimits:
    rate: float
    burst: float
    daily_quota: int  # 0 = none
    lease: float


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


def _utc_day(now: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date()


async def load_bucket_txn(cursor, name: str, burst: float, now: float) -> Bucket:
    await cursor.execute(
        "INSERT INTO send_buckets (name, tokens, refilled_at) VALUES (%s, %s, %s)"
        " ON CONFLICT (name) DO NOTHING",
        (name, burst, now),
    )
    await cursor.execute(
        "SELECT tokens, refilled_at, slowdown, slowed_at, paused_until"
        " FROM send_buckets WHERE name = %s FOR UPDATE",
        (name,),
    )
    return Bucket(name, *cursor.fetchone())


async def save_bucket_txn(cursor, bucket: Bucket) -> None:
    await cursor.execute(
        "UPDATE send_buckets SET tokens = %s, refilled_at = %s, slowdown = %s,"
        " slowed_at = %s, paused_until = %s WHERE name = %s",
        (bucket.tokens, bucket.refilled_at, bucket.slowdown, bucket.slowed_at,
         bucket.paused_until, bucket.name),
    )


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
        return await self.db.transaction(self._claim, owner, now, limit, limits, classes)

    async def _claim(self, cursor, owner, now, limit, limits: RateLimits, classes):
        relay = await load_bucket_txn(cursor, RELAY_BUCKET, limits.burst, now)
        relay.refill(limits.rate, limits.burst, now)
        allowed = min(limit, relay.available(now))
        retry_in = relay.wait(limits.rate, now) if allowed == 0 else None
        if limits.daily_quota and allowed:
            await cursor.execute(
                "SELECT coalesce((SELECT sent FROM send_daily_usage WHERE day = %s), 0)"
                " + (SELECT count(*) FROM outbox WHERE state = 'sending')",
                (_utc_day(now),),
            )
            remaining = limits.daily_quota - cursor.fetchone()[0]
            if remaining <= 0:
                tomorrow = datetime.datetime.combine(
                    _utc_day(now) + datetime.timedelta(days=1), datetime.time(),
                    datetime.timezone.utc)
                retry_in = tomorrow.timestamp() - now
            allowed = max(0, min(allowed, remaining))

        # classes with their own rate: their bucket caps their share
        capped = {}
        for name, qos in classes.items():
            if qos.rate > 0:
                bucket = await load_bucket_txn(cursor, f"qos:{name}", max(1.0, qos.rate), now)
                bucket.refill(qos.rate, max(1.0, qos.rate), now)
                capped[name] = bucket
        exhausted = [name for name, b in capped.items() if b.available(now) == 0]

        if allowed == 0:
            await cursor.execute(
                "SELECT 1 FROM outbox WHERE state = 'queued' AND next_attempt_at <= to_timestamp(%s)"
                " LIMIT 1", (now,))
            due = cursor.fetchone() is not None
            await save_bucket_txn(cursor, relay)
            return ClaimResult([], 0, retry_in if due else None)

        await cursor.execute(
            "SELECT o.id, o.qos, o.recipient, o.envelope_from, o.body, o.attempts, s.reason,"
            "   CASE WHEN o.unsubscribable THEN o.person_id END, o.course_id, o.kind"
            " FROM outbox o LEFT JOIN suppressions s ON s.address = lower(o.recipient)"
            " WHERE o.state = 'queued' AND o.next_attempt_at <= to_timestamp(%s)"
            "   AND o.qos <> ALL(%s::text[])"
            " ORDER BY o.priority DESC, o.next_attempt_at, o.id"
            " LIMIT %s FOR UPDATE OF o SKIP LOCKED",
            (now, exhausted, allowed),
        )
        rows = cursor.fetchall()
        opted_out = await self._opted_out(cursor, rows)
        claimed, suppressed = [], []
        for (row_id, qos, recipient, envelope_from, body, attempts, suppression,
             _person, _course, _kind) in rows:
            if suppression is not None:
                suppressed.append((row_id, f"suppressed: {suppression}"))
                continue
            if row_id in opted_out:
                suppressed.append((row_id, f"suppressed: {opted_out[row_id]}"))
                continue
            class_bucket = capped.get(qos)
            if class_bucket is not None:
                if class_bucket.available(now) == 0:
                    continue  # left queued for a later claim
                class_bucket.take(1)
            claimed.append(Claimed(row_id, qos, recipient, envelope_from, bytes(body), attempts))
        relay.take(len(claimed))

        if claimed:
            await cursor.execute(
                "UPDATE outbox SET state = 'sending', lease_owner = %s,"
                " lease_until = to_timestamp(%s), updated_at = now()"
                " WHERE id = ANY(%s)",
                (owner, now + limits.lease, [m.id for m in claimed]),
            )
        if suppressed:
            await cursor.execute(
                "UPDATE outbox o SET state = 'suppressed', reason = v.reason,"
                " updated_at = now(), finished_at = now()"
                " FROM unnest(%s::bigint[], %s::text[]) AS v(id, reason) WHERE o.id = v.id",
                ([i for i, _ in suppressed], [r for _, r in suppressed]),
            )
        await save_bucket_txn(cursor, relay)
        for bucket in capped.values():
            await save_bucket_txn(cursor, bucket)
        if len(claimed) < allowed and len(rows) == allowed:
            retry_in = 0.0  # some rows were skipped by a class cap or suppressed: look again
        elif len(claimed) == allowed and allowed < limit:
            retry_in = relay.wait(limits.rate, now)
        return ClaimResult(claimed, len(suppressed), retry_in)

    @staticmethod
    async def _opted_out(cursor, rows) -> dict[int, str]:
        """
        {outbox id: reason} for the claimed rows whose person opted out of
        them; one indexed query, and none when no row is unsubscribable.
        """
        wanted = [(r[0], r[7], r[8], r[9]) for r in rows if r[7] is not None and r[6] is None]
        if not wanted:
            return {}
        await cursor.execute(
            "SELECT DISTINCT ON (v.id) v.id, m.person_id, m.course_id, m.kind, m.source,"
            "   to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
            " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::text[])"
            "   AS v(id, person_id, course_id, kind)"
            " JOIN mail_optouts m ON m.person_id = v.person_id"
            "   AND (m.course_id IS NULL OR m.course_id = v.course_id)"
            "   AND (m.kind IS NULL OR m.kind = v.kind)"
            # the narrowest matching opt-out names the reason
            " ORDER BY v.id, m.kind IS NULL, m.course_id IS NULL, m.id",
            ([w[0] for w in wanted], [w[1] for w in wanted], [w[2] for w in wanted],
             [w[3] for w in wanted]),
        )
        return {row_id: optout_reason(person_id, Scope(course_id, kind), source, day)
                for row_id, person_id, course_id, kind, source, day in cursor.fetchall()}

    # -- results ---------------------------------------------------------------
    async def record(self, owner: str, decisions: Sequence[Decision], now: float,
                     throttled: bool = False, pause_until: float = 0.0):
        """
        Apply the decisions (one transaction), log every attempt, count the
        day's sent recipients, and slow or pause the relay bucket when the
        relay throttled us.  Fires with the seconds from enqueue to now of
        each message recorded as sent (for the latency metric).
        """
        return await self.db.transaction(self._record, owner, decisions, now, throttled,
                                         pause_until)

    async def _record(self, cursor, owner, decisions, now, throttled, pause_until):
        latencies: list[float] = []
        if decisions:
            await cursor.execute(
                "UPDATE outbox o SET state = v.state, attempts = v.attempts,"
                " next_attempt_at = coalesce(to_timestamp(v.next_at), o.next_attempt_at),"
                " reason = v.reason, lease_owner = NULL, lease_until = NULL, updated_at = now(),"
                " finished_at = CASE WHEN v.state IN ('sent', 'failed') THEN now() END"
                " FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::float8[], %s::text[])"
                "   AS v(id, state, attempts, next_at, reason)"
                " WHERE o.id = v.id AND o.state = 'sending' AND o.lease_owner = %s"
                " RETURNING extract(epoch FROM now() - o.created_at)::float8, v.state",
                ([d.outbox_id for d in decisions], [d.state for d in decisions],
                 [d.attempts for d in decisions], [d.next_attempt_at for d in decisions],
                 [d.reason for d in decisions], owner),
            )
            latencies = [seconds for seconds, state in cursor.fetchall() if state == "sent"]
            await cursor.execute(
                "INSERT INTO outbox_attempts (outbox_id, outcome, code, reply, sender)"
                " SELECT *, %s FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[])",
                (owner, [d.outbox_id for d in decisions], [d.outcome for d in decisions],
                 [d.code for d in decisions], [d.reply for d in decisions]),
            )
            sent = sum(1 for d in decisions if d.state == "sent")
            if sent:
                await cursor.execute(
                    "INSERT INTO send_daily_usage (day, sent) VALUES (%s, %s)"
                    " ON CONFLICT (day) DO UPDATE SET sent = send_daily_usage.sent + EXCLUDED.sent",
                    (_utc_day(now), sent),
                )
            if any(d.state == "queued" for d in decisions):
                await notify(cursor, OUTBOX_CHANNEL)
        if throttled or pause_until:
            await cursor.execute(
                "SELECT tokens, refilled_at, slowdown, slowed_at, paused_until"
                " FROM send_buckets WHERE name = %s FOR UPDATE", (RELAY_BUCKET,))
            row = cursor.fetchone()
            if row is not None:
                bucket = Bucket(RELAY_BUCKET, *row)
                if throttled:
                    bucket.throttled(now)
                if pause_until:
                    bucket.pause(pause_until)
                await save_bucket_txn(cursor, bucket)
        return latencies

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
async def insert_messages_txn(cursor, template: str, qos: QoSClass, messages: Sequence[Rendered],
                          batch: str | None = None) -> list[int]:
    """
    Queue C{messages} and wake the senders (on commit); returns the ids, in
    the order of C{messages}.

    The statement's size is what its cost grows with, in this process and in
    PostgreSQL's: a Python list becomes C{ARRAY[...]} with one constant per
    element for PostgreSQL to parse.  So each column travels as one value:
    the bodies as one bytea cut by (offset, length) pairs, every other
    column as one array literal (L{array_literal}).  Bodies are ASCII (MIME
    encodes everything else), and as text they cost PostgreSQL a third less
    than as hex-encoded bytea; bytes that are not ASCII text go as bytea.
    """
    if not messages:
        return []
    bodies = b"".join(m.data for m in messages)
    if bodies.isascii() and b"\0" not in bodies:
        # (a subquery, so that the text becomes bytea once, not once a row)
        all_bodies, bodies_param = "(SELECT convert_to(%s::text, 'UTF8'))", bodies.decode("ascii")
    else:
        all_bodies, bodies_param = "%s::bytea", Binary(bodies)
    lengths = [len(m.data) for m in messages]
    offsets = list(itertools.accumulate(lengths, initial=1))[:-1]  # substring() counts from 1
    await cursor.execute(
        "INSERT INTO outbox (template, qos, priority, recipient, envelope_from,"
        " message_id, subject, body, batch, person_id, course_id, kind, unsubscribable)"
        " SELECT %s, %s, %s, r, e, m, s, substring(" + all_bodies + " FROM o FOR l), %s, p, c, k, u"
        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::int[],"
        "   %s::bigint[], %s::bigint[], %s::text[], %s::boolean[])"
        "   WITH ORDINALITY AS v(r, e, m, s, o, l, p, c, k, u, n)"
        " ORDER BY n RETURNING id",
        (template, qos.name, qos.priority, bodies_param, batch,
         array_literal([m.recipient for m in messages]),
         array_literal([m.envelope_from for m in messages]),
         array_literal([m.message_id for m in messages]),
         array_literal([m.subject for m in messages]),
         _number_array(offsets), _number_array(lengths),
         _number_array([m.person_id for m in messages]),
         _number_array([m.course_id for m in messages]),
         array_literal([m.kind for m in messages]),
         "{" + ",".join("t" if m.unsubscribable else "f" for m in messages) + "}"),
    )
    ids = [row[0] for row in cursor.fetchall()]
    await notify(cursor, OUTBOX_CHANNEL)
    return ids


def _array_element(value: str | None) -> str:
    if value is None:
        return "NULL"
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{value}"'


def array_literal(values: Sequence[str | None]) -> str:
    """
    A PostgreSQL array literal (C{{"a","b",NULL}}) of C{values}, for a
    C{%s::text[]} parameter: every element is double-quoted with its
    backslashes and double quotes escaped, so no content (commas, braces,
    the word NULL) can change the array's shape.
    """
    return "{" + ",".join(map(_array_element, values)) + "}"


def _number_array(values: Sequence[int | None]) -> str:
    return "{" + ",".join("NULL" if v is None else str(int(v)) for v in values) + "}"


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

