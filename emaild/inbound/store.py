"""
The inbound part's tables: C{inbound_messages}, C{inbound_recipients} and
C{bounces}.

A message is stored, with one row per accepted recipient saying what that
address means, before the SMTP server answers 250.  The relay processor then
takes many recipient rows per transaction (C{FOR UPDATE SKIP LOCKED}, so
several emaild processes can share the work) and finishes them in the same
transaction that queues their outbound copies: a crash in between leaves
the rows C{received} and their work is redone exactly once.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Sequence

import attrs
from psycopg2 import Binary
from twisted.python.failure import Failure

from emaild.db.arrays import bool_array, int_array, text_array
from emaild.db.database import DatabaseUnavailable
from emaild.db.prepared import Statement
from emaild.db.reconnect import connection_died
from emaild.inbound.records import Outcome, Pending, Received, ReceivedRow, Recipient, Refusal

#: NOTIFY channel that wakes the relay processor when mail arrived
INBOUND_CHANNEL = "emaild_inbound"
RELAY, UNSUBSCRIBE, BOUNCE = "relay", "unsubscribe", "bounce"
TERMINAL = ("done", "ignored", "failed")

# the statements run for every post (emaild.db.prepared)
#: the group commit: several messages with their recipients
_RECEIVE_MANY = Statement(
    "inbound_receive_many",
    "WITH v AS MATERIALIZED (SELECT nextval(pg_get_serial_sequence("
    "   'inbound_messages', 'id')) AS id, v.*"
    "   FROM unnest($1::text[], $2::text[], $3::boolean[], $4::text[], $5::integer[],"
    "     $6::bytea[], $7::text[]) WITH ORDINALITY"
    "     AS v(peer, helo, tls, mail_from, size, raw, authentication, n)),"
    " m AS (INSERT INTO inbound_messages (id, peer, helo, tls, mail_from, size, raw,"
    "   authentication) SELECT id, peer, helo, tls, mail_from, size, raw, authentication"
    "   FROM v),"
    " r AS (INSERT INTO inbound_recipients (message_id, address, purpose, group_id,"
    "   person_id, link_id, outbox_id)"
    "   SELECT v.id, a, p, g, pe, l, o FROM unnest($8::bigint[], $9::text[], $10::text[],"
    "     $11::bigint[], $12::bigint[], $13::bigint[], $14::bigint[]) WITH ORDINALITY"
    "     AS x(n, a, p, g, pe, l, o, k) JOIN v ON v.n = x.n ORDER BY x.k)"
    " SELECT array_agg(id ORDER BY n), "
    f"pg_notify('{INBOUND_CHANNEL}', '') FROM v")
#: the posting-rate counts of several RCPTs
_RECENT_POSTS = Statement(
    "inbound_recent_posts",
    "SELECT (SELECT count(*) FROM (SELECT 1 FROM inbound_recipients r"
    "  JOIN inbound_messages m ON m.id = r.message_id"
    "  WHERE r.purpose = 'relay' AND r.group_id = k.g AND r.person_id = k.p"
    "  AND m.received_at > now() - make_interval(secs => $4::float8)"
    "  ORDER BY r.message_id DESC LIMIT k.at_most) recent)"
    " FROM unnest($1::bigint[], $2::bigint[], $3::integer[]) WITH ORDINALITY"
    "   AS k(g, p, at_most, n) ORDER BY k.n")


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

    def receive_many(self, posts: Sequence[Received]):
        """
        Store several messages (each with its recipients) in one statement,
        hence one transaction, and wake the processor once.  Fires with
        their message ids, in order; on failure none of them is stored.
        """
        recipients = [(n, r) for n, post in enumerate(posts, 1) for r in post.recipients]
        d = self.db.run_prepared(
            _RECEIVE_MANY,
            # each list as one array literal (see emaild.db.arrays), but the
            # messages: psycopg2's own bytea quoting (libpq, in C) is faster
            # than any literal built here
            (text_array(p.peer for p in posts), text_array(p.helo for p in posts),
             bool_array(p.tls for p in posts), text_array(p.mail_from for p in posts),
             int_array(len(p.raw) for p in posts), [Binary(p.raw) for p in posts],
             text_array(p.authentication for p in posts),
             int_array(n for n, _ in recipients), text_array(r.address for _, r in recipients),
             text_array(r.purpose for _, r in recipients),
             int_array(r.group_id for _, r in recipients),
             int_array(r.person_id for _, r in recipients),
             int_array(r.link_id for _, r in recipients),
             int_array(r.outbox_id for _, r in recipients)))
        return d.addCallback(lambda rows: list(rows[0][0]))

    async def _count_failure(self, recipient_id: int, failure: Failure,
                             max_attempts: int) -> tuple[str, str]:
        reason = f"internal error: {failure.value!r}"[:500]
        rows = await self.db.runQuery(
            "UPDATE inbound_recipients SET attempts = attempts + 1,"
            "  state = CASE WHEN attempts + 1 >= %s THEN 'failed' ELSE state END,"
            "  reason = %s, processed_at = CASE WHEN attempts + 1 >= %s THEN now() END"
            " WHERE id = %s AND state = %s RETURNING state",
            (max_attempts, reason, max_attempts, recipient_id, PENDING_STATE))
        return ("failed" if rows and rows[0][0] == "failed" else "retry"), reason

    async def counts(self) -> dict[str, int]:
        rows = await self.db.runQuery(
            "SELECT state, count(*) FROM inbound_recipients GROUP BY state")
        counts = {state: 0 for state in ("received", "held", *TERMINAL)}
        counts.update(dict(rows))
        return counts

    async def recent(self, states: Sequence[str] = ("received", *TERMINAL), limit: int = 50,
                     message_id: int | None = None) -> list[ReceivedRow]:
        """
        The newest recipient rows in C{states} (or those of one message).
        """
        rows = await self.db.runQuery(
            "SELECT m.id, m.received_at, m.mail_from, r.address, r.purpose, r.state,"
            " r.reason, m.size, m.authentication"
            " FROM inbound_recipients r JOIN inbound_messages m ON m.id = r.message_id"
            " WHERE r.state = ANY(%s) AND (%s::bigint IS NULL OR m.id = %s)"
            " ORDER BY r.id DESC LIMIT %s", (list(states), message_id, message_id, limit))
        return [ReceivedRow(*r) for r in rows]

    # -- limits checked before anything is stored ----------------------------
    async def recent_posts(self, members: Sequence[tuple[int, int, int]], *,
                           seconds: float) -> list[int]:
        """
        For each (group id, person id, at most) of C{members}, in order: how
        many messages the member stored as posts to the group in the last
        C{seconds} (counting stops at C{at most}).  One statement.
        """
        rows = await self.db.run_prepared(_RECENT_POSTS, (
            int_array(g for g, _, _ in members), int_array(p for _, p, _ in members),
            int_array(n for _, _, n in members), float(seconds)))
        return [row[0] for row in rows]

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


#: The recipient rows the relay processor may take.  Only rows in this state
#: are ever selected for processing; a row that must wait (for instance a post
#: held until its author confirms it) is kept out of it by its state.
PENDING_STATE = "received"

_CLAIM_PENDING = Statement(
    "inbound_claim_pending",
    "SELECT r.id, r.message_id, r.address, r.purpose, r.group_id, r.person_id,"
    " r.link_id, r.outbox_id, r.attempts, m.mail_from, m.raw,"
    " EXISTS (SELECT 1 FROM inbound_recipients o WHERE o.message_id = r.message_id"
    "   AND o.id <> r.id)"
    " FROM inbound_recipients r JOIN inbound_messages m ON m.id = r.message_id"
    f" WHERE r.state = '{PENDING_STATE}' AND r.id > $1 ORDER BY r.id LIMIT $2"
    " FOR UPDATE OF r SKIP LOCKED")
_FINISH = Statement(
    "inbound_finish",
    "UPDATE inbound_recipients r SET state = v.state, reason = v.reason,"
    " processed_at = now(), attempts = r.attempts + 1"
    " FROM unnest($1::bigint[], $2::text[], $3::text[]) AS v(id, state, reason)"
    f" WHERE r.id = v.id AND r.state = '{PENDING_STATE}'")


async def claim_pending_txn(cursor, limit: int, after: int = 0) -> list[Pending]:
    """
    Lock and return up to C{limit} of the oldest rows waiting to be
    processed (with an id above C{after}) that no other transaction holds (C{FOR UPDATE SKIP LOCKED},
    so several emaild processes share the work).  Every selection of rows
    for processing goes through here.
    """
    await cursor.execute_prepared(_CLAIM_PENDING, (after, limit))
    return [_pending(*row) for row in cursor.fetchall()]


def _pending(row_id, message_id, address, purpose, group_id, person_id, link_id, outbox_id,
             attempts, mail_from, raw, shared) -> Pending:
    return Pending(row_id, message_id, address, purpose, group_id, person_id, link_id,
                   outbox_id, attempts, mail_from, bytes(raw), shared)


def _transaction_lost(error: Exception) -> bool:
    # the connection is gone (or the database, for a call handle made on
    # another connection): the batch is redone as a whole
    return isinstance(error, DatabaseUnavailable) or connection_died(Failure(error))


async def _finish(cursor, outcomes: Sequence[tuple[int, Outcome]]) -> None:
    if not outcomes:
        return
    await cursor.execute_prepared(_FINISH, (
        int_array(i for i, _ in outcomes), text_array(o.state for _, o in outcomes),
        text_array(o.reason for _, o in outcomes)))



# -- whole batches: one call does the work of every row ------------------------
#: what L{InboundStore.process_rows} calls: the work of a batch of rows (in
#: one transaction), an L{Outcome} for each row of a prefix of them, in order
BatchWork = Callable[[Any, list[Pending]], Awaitable[list[tuple[Pending, Outcome]]]]
#: an outcome to count as a failed attempt, in the batch's own transaction
RETRY = "retry"


class _BatchFailed(Exception):
    def __init__(self, first: Pending, failure: Failure, last: int):
        super().__init__(first.id)
        self.first, self.failure, self.last = first, failure, last


async def process_rows(store: InboundStore, work: BatchWork, *, limit: int, max_attempts: int
                       ) -> tuple[list[tuple[Pending, Outcome]], int]:
    """
    Take up to C{limit} unprocessed rows (L{claim_pending_txn}), call
    C{await work(cursor, rows)} once, record every L{Outcome} it returns
    and commit once: a batch costs a few statements, not a few per row.
    Rows C{work} returned no outcome for stay C{received} for the next
    batch.  An outcome in state L{RETRY} (the row could not be processed:
    C{work} said why) counts an attempt in the same transaction (C{failed}
    after C{max_attempts}).

    When C{work} raises, the batch is undone and its rows are done again
    one per transaction, so only a row that raises alone is held back (its
    attempt counted: C{failed} after C{max_attempts}, else C{received} again,
    outcome state C{retry}).  A lost
    connection undoes the whole batch: every row is redone, exactly once,
    later.

    Fires with ([(pending, outcome)], the number of rows still waiting
    when the batch was taken, its own included: 0 unless the batch was full).
    """
    db = store.db
    try:
        return await db.transaction(_rows_txn, work, limit, 0, max_attempts)
    except _BatchFailed as failed:
        last = failed.last
    results: list[tuple[Pending, Outcome]] = []
    after = 0
    while True:
        try:
            one, _ = await db.transaction(_rows_txn, work, 1, after, max_attempts)
        except _BatchFailed as f:
            state, reason = await store._count_failure(f.first.id, f.failure, max_attempts)
            results.append((f.first, Outcome(state, reason, failure=f.failure)))
            pending = f.first
        else:
            if not one:
                break
            results += one
            pending = one[-1][0]
        if pending.id >= last:
            break
        after = pending.id
    return results, 0


async def _rows_txn(cursor, work: BatchWork, limit: int, after: int, max_attempts: int):
    batch = await claim_pending_txn(cursor, limit, after)
    if not batch:
        return [], 0
    waiting = await pending_count_txn(cursor) if len(batch) >= limit > 1 else len(batch)
    try:
        results = await work(cursor, batch)
    except Exception as e:
        if _transaction_lost(e):
            raise
        raise _BatchFailed(batch[0], Failure(), batch[-1].id) from None
    await _finish(cursor, [(p.id, o) for p, o in results if o.state in TERMINAL])
    retry = [(p, o) for p, o in results if o.state == RETRY]
    if retry:
        await cursor.execute(
            "UPDATE inbound_recipients r SET attempts = r.attempts + 1, reason = v.reason,"
            "  state = CASE WHEN r.attempts + 1 >= %s THEN 'failed' ELSE r.state END,"
            "  processed_at = CASE WHEN r.attempts + 1 >= %s THEN now() END"
            " FROM unnest(%s::bigint[], %s::text[]) AS v(id, reason)"
            " WHERE r.id = v.id AND r.state = %s RETURNING r.id, r.state",
            (max_attempts, max_attempts, int_array(p.id for p, _ in retry),
             text_array(o.reason[:500] for _, o in retry), PENDING_STATE))
        failed = {row_id for row_id, state in cursor.fetchall() if state == "failed"}
        results = [(p, attrs.evolve(o, state="failed") if o.state == RETRY and p.id in failed
                    else o) for p, o in results]
    return results, waiting


async def pending_count_txn(cursor) -> int:
    """How many rows wait to be processed (locked ones included)."""
    await cursor.execute("SELECT count(*) FROM inbound_recipients WHERE state = %s",
                         (PENDING_STATE,))
    return cursor.fetchone()[0]


# -- bounces (inside the processor's transaction) ----------------------------
async def record_bounce_txn(cursor, *, address: str, outbox_id: int | None, person_id: int | None,
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
