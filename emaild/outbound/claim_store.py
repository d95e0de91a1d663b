"""
The outbound store's sending side: the transactions the sender runs on
C{outbox} and the token buckets -- claim (due rows to C{sending} under a
lease, within the rate and the daily quota) and record (delivery outcomes
and the attempt log).  L{emaild.outbound.store.OutboxStore} runs them;
each takes the caller's cursor.
"""

from __future__ import annotations

import datetime
from typing import Mapping, Sequence

import attrs

from emaild.config import QoSClass
from emaild.db.arrays import int_array, text_array
from emaild.db.database import notify
from emaild.db.prepared import Statement
from emaild.outbound.bucket import Bucket
from emaild.outbound.kinds import Scope, optout_reason
from emaild.outbound.policy import Decision

#: NOTIFY channel that wakes idle senders when mail is queued
OUTBOX_CHANNEL = "emaild_outbox"
RELAY_BUCKET = "relay"


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
    #: the relay bucket's last refill as this claim found it: the time of
    #: the last claim on it, ours or another process's
    last_refill: float = 0.0


@attrs.frozen
class RateLimits:
    rate: float
    burst: float
    daily_quota: int  # 0 = none
    lease: float


# the statements of every claim and record, prepared (emaild.db.prepared)
_ENSURE_BUCKET = Statement(
    "outbound_ensure_bucket",
    "INSERT INTO send_buckets (name, tokens, refilled_at) VALUES ($1, $2, $3)"
    " ON CONFLICT (name) DO NOTHING")
_LOCK_BUCKET = Statement(
    "outbound_lock_bucket",
    "SELECT tokens, refilled_at, slowdown, slowed_at, paused_until"
    " FROM send_buckets WHERE name = $1 FOR UPDATE")
_SAVE_BUCKET = Statement(
    "outbound_save_bucket",
    "UPDATE send_buckets SET tokens = $1, refilled_at = $2, slowdown = $3,"
    " slowed_at = $4, paused_until = $5 WHERE name = $6")
_ANY_DUE = Statement(
    "outbound_any_due",
    "SELECT 1 FROM outbox WHERE state = 'queued' AND next_attempt_at <= to_timestamp($1::float8)"
    " LIMIT 1")
_CLAIM = Statement(
    "outbound_claim",
    "SELECT o.id, o.qos, o.recipient, o.envelope_from, o.body, o.attempts, s.reason,"
    "   CASE WHEN o.unsubscribable THEN o.person_id END, o.course_id, o.kind"
    " FROM outbox o LEFT JOIN suppressions s ON s.address = lower(o.recipient)"
    " WHERE o.state = 'queued' AND o.next_attempt_at <= to_timestamp($1::float8)"
    "   AND o.qos <> ALL($2::text[])"
    " ORDER BY o.priority DESC, o.next_attempt_at, o.id"
    " LIMIT $3 FOR UPDATE OF o SKIP LOCKED")
_LEASE = Statement(
    "outbound_lease",
    "UPDATE outbox SET state = 'sending', lease_owner = $1,"
    " lease_until = to_timestamp($2::float8), updated_at = now()"
    " WHERE id = ANY($3::bigint[])")
_COUNT_SENT = Statement(
    "outbound_count_sent",
    "INSERT INTO send_daily_usage (day, sent) VALUES ($1, $2)"
    " ON CONFLICT (day) DO UPDATE SET sent = send_daily_usage.sent + EXCLUDED.sent")
_OPTED_OUT = Statement(
    "outbound_opted_out",
    "SELECT DISTINCT ON (v.id) v.id, m.person_id, m.course_id, m.kind, m.source,"
    "   to_char(m.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    " FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[])"
    "   AS v(id, person_id, course_id, kind)"
    " JOIN mail_optouts m ON m.person_id = v.person_id"
    "   AND (m.course_id IS NULL OR m.course_id = v.course_id)"
    "   AND (m.kind IS NULL OR m.kind = v.kind)"
    # the narrowest matching opt-out names the reason
    " ORDER BY v.id, m.kind IS NULL, m.course_id IS NULL, m.id")
_RECORD_SENT = Statement(
    "outbound_record_sent",
    "WITH v AS (SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::int[],"
    "   $5::text[]) AS v(id, attempts, reason, code, reply)),"
    " done AS (UPDATE outbox o SET state = 'sent', attempts = v.attempts, reason = v.reason,"
    "   lease_owner = NULL, lease_until = NULL, updated_at = now(), finished_at = now()"
    "   FROM v WHERE o.id = v.id AND o.state = 'sending' AND o.lease_owner = $6"
    "   RETURNING extract(epoch FROM now() - o.created_at)::float8),"
    " logged AS (INSERT INTO outbox_attempts (outbox_id, outcome, code, reply, sender)"
    "   SELECT id, 'sent', code, reply, $6 FROM v)"
    " SELECT * FROM done")


def _utc_day(now: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date()


async def load_bucket_txn(cursor, name: str, burst: float, now: float) -> Bucket:
    """
    The bucket C{name}, its row locked; made full (C{burst} tokens) when
    there is none yet.  The row is made once and then only updated, so it
    is locked first and made only when that finds nothing: one statement
    on every claim, not two.
    """
    await cursor.execute_prepared(_LOCK_BUCKET, (name,))
    row = cursor.fetchone()
    if row is None:
        # (another process may make it meanwhile: then nothing is inserted)
        await cursor.execute_prepared(_ENSURE_BUCKET, (name, burst, now))
        await cursor.execute_prepared(_LOCK_BUCKET, (name,))
        row = cursor.fetchone()
    return Bucket(name, *row)


async def save_bucket_txn(cursor, bucket: Bucket) -> None:
    await cursor.execute_prepared(_SAVE_BUCKET, (
        bucket.tokens, bucket.refilled_at, bucket.slowdown, bucket.slowed_at,
        bucket.paused_until, bucket.name))


async def claim_txn(cursor, owner: str, now: float, limit: int, limits: RateLimits,
                    classes: Mapping[str, QoSClass]) -> ClaimResult:
    """L{OutboxStore.claim} inside the caller's transaction."""
    relay = await load_bucket_txn(cursor, RELAY_BUCKET, limits.burst, now)
    last_refill = relay.refilled_at
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
        await cursor.execute_prepared(_ANY_DUE, (now,))
        due = cursor.fetchone() is not None
        await save_bucket_txn(cursor, relay)
        return ClaimResult([], 0, retry_in if due else None, last_refill)

    await cursor.execute_prepared(_CLAIM, (now, text_array(exhausted), allowed))
    rows = cursor.fetchall()
    opted_out = await opted_out_txn(cursor, rows)
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
        await cursor.execute_prepared(_LEASE, (
            owner, now + limits.lease, int_array(m.id for m in claimed)))
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
    return ClaimResult(claimed, len(suppressed), retry_in, last_refill)


async def opted_out_txn(cursor, rows) -> dict[int, str]:
    """
    {outbox id: reason} for the claimed rows whose person opted out of
    them; one indexed query, and none when no row is unsubscribable.
    """
    wanted = [(r[0], r[7], r[8], r[9]) for r in rows if r[7] is not None and r[6] is None]
    if not wanted:
        return {}
    await cursor.execute_prepared(_OPTED_OUT, (
        int_array(w[0] for w in wanted), int_array(w[1] for w in wanted),
        int_array(w[2] for w in wanted), text_array(w[3] for w in wanted)))
    return {row_id: optout_reason(person_id, Scope(course_id, kind), source, day)
            for row_id, person_id, course_id, kind, source, day in cursor.fetchall()}


async def record_txn(cursor, owner: str, decisions: Sequence[Decision], now: float,
                     throttled: bool, pause_until: float) -> list[float]:
    """L{OutboxStore.record} inside the caller's transaction."""
    latencies: list[float] = []
    if decisions:
        sent = [d for d in decisions if d.state == "sent"]
        others = [d for d in decisions if d.state != "sent"] if len(sent) < len(decisions) else []
        if sent:
            latencies = await record_sent_txn(cursor, owner, sent)
        if others:
            await record_outcomes_txn(cursor, owner, others)
        if sent:
            await cursor.execute_prepared(_COUNT_SENT, (_utc_day(now), len(sent)))
        if any(d.state == "queued" for d in others):
            await notify(cursor, OUTBOX_CHANNEL)
    if throttled or pause_until:
        await cursor.execute_prepared(_LOCK_BUCKET, (RELAY_BUCKET,))
        row = cursor.fetchone()
        if row is not None:
            bucket = Bucket(RELAY_BUCKET, *row)
            if throttled:
                bucket.throttled(now)
            if pause_until:
                bucket.pause(pause_until)
            await save_bucket_txn(cursor, bucket)
    return latencies


async def record_sent_txn(cursor, owner: str, decisions: Sequence[Decision]) -> list[float]:
    """
    Mark the rows of C{decisions} (all C{sent}) sent and log their
    attempts, in one statement; a row whose lease C{owner} no longer holds
    is left alone (its attempt is still logged).  Returns the seconds from
    enqueue to now of each row marked sent.
    """
    await cursor.execute_prepared(_RECORD_SENT, (
        int_array(d.outbox_id for d in decisions), int_array(d.attempts for d in decisions),
        [d.reason for d in decisions], int_array(d.code for d in decisions),
        [d.reply for d in decisions], owner))
    return [row[0] for row in cursor.fetchall()]


async def record_outcomes_txn(cursor, owner: str, decisions: Sequence[Decision]) -> None:
    """
    Apply decisions of any state (requeued, failed, sent) to rows whose
    lease C{owner} holds, and log every attempt.
    """
    await cursor.execute(
        "UPDATE outbox o SET state = v.state, attempts = v.attempts,"
        " next_attempt_at = coalesce(to_timestamp(v.next_at), o.next_attempt_at),"
        " reason = v.reason, lease_owner = NULL, lease_until = NULL, updated_at = now(),"
        " finished_at = CASE WHEN v.state IN ('sent', 'failed') THEN now() END"
        " FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::float8[], %s::text[])"
        "   AS v(id, state, attempts, next_at, reason)"
        " WHERE o.id = v.id AND o.state = 'sending' AND o.lease_owner = %s",
        ([d.outbox_id for d in decisions], [d.state for d in decisions],
         [d.attempts for d in decisions], [d.next_attempt_at for d in decisions],
         [d.reason for d in decisions], owner),
    )
    await cursor.execute(
        "INSERT INTO outbox_attempts (outbox_id, outcome, code, reply, sender)"
        " SELECT *, %s FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[])",
        (owner, [d.outbox_id for d in decisions], [d.outcome for d in decisions],
         [d.code for d in decisions], [d.reply for d in decisions]),
    )
