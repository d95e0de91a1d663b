"""
The outbound store's enqueue side: queueing rendered messages in
C{outbox}, inside the caller's transaction (L{emaild.outbound.outbox.Outbox}
through L{emaild.outbound.store.OutboxStore.enqueue}, and the relay
processor and digests in their own transactions).
"""

from __future__ import annotations

import itertools
from typing import Sequence

from psycopg2 import Binary

from emaild.config import QoSClass
from emaild.db.arrays import bool_array, int_array, text_array
from emaild.db.database import notify
from emaild.db.prepared import Statement
from emaild.outbound.claim_store import OUTBOX_CHANNEL
from emaild.outbound.compose import Rendered

#: L{insert_message_batches_txn}'s statement (the relay processor's, once a
#: batch), prepared (emaild.db.prepared)
_INSERT_BATCHES = Statement(
    "outbound_insert_batches",
    "WITH i AS (INSERT INTO outbox (template, qos, priority, recipient, envelope_from,"
    "   message_id, subject, body, batch, person_id, course_id, kind, unsubscribable)"
    "   SELECT $1, $2, $3, r, e, m, s, b, a, p, c, k, u"
    "   FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::bytea[], $9::text[],"
    "     $10::bigint[], $11::bigint[], $12::text[], $13::boolean[])"
    "     WITH ORDINALITY AS v(r, e, m, s, b, a, p, c, k, u, n)"
    "   ORDER BY n RETURNING 1)"
    f" SELECT count(*), pg_notify('{OUTBOX_CHANNEL}', '') FROM i")


async def insert_messages_txn(cursor, template: str, qos: QoSClass, messages: Sequence[Rendered],
                          batch: str | None = None) -> list[int]:
    """
    Queue C{messages} and wake the senders (on commit); returns the ids, in
    the order of C{messages}.

    The statement's size is what its cost grows with, in this process and in
    PostgreSQL's: a Python list becomes C{ARRAY[...]} with one constant per
    element for PostgreSQL to parse.  So each column travels as one value:
    the bodies as one bytea cut by (offset, length) pairs, every other
    column as one array literal (L{emaild.db.arrays}).  Bodies are ASCII (MIME
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
         text_array([m.recipient for m in messages]),
         text_array([m.envelope_from for m in messages]),
         text_array([m.message_id for m in messages]),
         text_array([m.subject for m in messages]),
         int_array(offsets), int_array(lengths),
         int_array([m.person_id for m in messages]),
         int_array([m.course_id for m in messages]),
         text_array([m.kind for m in messages]),
         bool_array(m.unsubscribable for m in messages)),
    )
    ids = [row[0] for row in cursor.fetchall()]
    await notify(cursor, OUTBOX_CHANNEL)
    return ids


async def insert_message_batches_txn(cursor, template: str, qos: QoSClass,
                                     batches: Sequence[tuple[str | None, Sequence[Rendered]]]
                                     ) -> int:
    """
    L{insert_messages_txn} for several batches (each with its C{batch}
    label) in one statement, the senders' wake-up included; returns how
    many messages were queued.
    """
    labels = [label for label, messages in batches for _ in messages]
    messages = [m for _, batch in batches for m in batch]
    if not messages:
        return 0
    await cursor.execute_prepared(
        _INSERT_BATCHES,
        (template, qos.name, qos.priority,
         text_array([m.recipient for m in messages]),
         text_array([m.envelope_from for m in messages]),
         text_array([m.message_id for m in messages]),
         text_array([m.subject for m in messages]),
         [Binary(m.data) for m in messages], text_array(labels),
         int_array([m.person_id for m in messages]), int_array([m.course_id for m in messages]),
         text_array([m.kind for m in messages]),
         bool_array([m.unsubscribable for m in messages])))
    return cursor.fetchone()[0]
