"""
The outbound store's enqueue side: queueing rendered messages in
C{outbox}, inside the caller's transaction (L{emaild.outbound.outbox.Outbox}
through L{emaild.outbound.store.OutboxStore.enqueue}, and the relay
processor and digests in their own transactions).
"""

from __future__ import annotations

from typing import Sequence

from psycopg2 import Binary

from emaild.config import QoSClass
from emaild.db.database import notify
from emaild.outbound.claim_store import OUTBOX_CHANNEL
from emaild.outbound.compose import Rendered


async def insert_messages_txn(cursor, template: str, qos: QoSClass, messages: Sequence[Rendered],
                          batch: str | None = None) -> list[int]:
    """
    Queue C{messages} and wake the senders (on commit); returns the ids.
    """
    await cursor.execute(
        "INSERT INTO outbox (template, qos, priority, recipient, envelope_from,"
        " message_id, subject, body, batch, person_id, course_id, kind, unsubscribable)"
        " SELECT %s, %s, %s, r, e, m, s, b, %s, p, c, k, u"
        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[],"
        "   %s::bigint[], %s::bigint[], %s::text[], %s::boolean[])"
        "   WITH ORDINALITY AS v(r, e, m, s, b, p, c, k, u, n)"
        " ORDER BY n RETURNING id",
        (template, qos.name, qos.priority, batch,
         [m.recipient for m in messages], [m.envelope_from for m in messages],
         [m.message_id for m in messages], [m.subject for m in messages],
         [Binary(m.data) for m in messages], [m.person_id for m in messages],
         [m.course_id for m in messages], [m.kind for m in messages],
         [m.unsubscribable for m in messages]),
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
    await cursor.execute(
        "WITH i AS (INSERT INTO outbox (template, qos, priority, recipient, envelope_from,"
        "   message_id, subject, body, batch, person_id, course_id, kind, unsubscribable)"
        "   SELECT %s, %s, %s, r, e, m, s, b, a, p, c, k, u"
        "   FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::bytea[], %s::text[],"
        "     %s::bigint[], %s::bigint[], %s::text[], %s::boolean[])"
        "     WITH ORDINALITY AS v(r, e, m, s, b, a, p, c, k, u, n)"
        "   ORDER BY n RETURNING 1)"
        " SELECT count(*), pg_notify(%s, '') FROM i",
        (template, qos.name, qos.priority,
         [m.recipient for m in messages], [m.envelope_from for m in messages],
         [m.message_id for m in messages], [m.subject for m in messages],
         [Binary(m.data) for m in messages], labels, [m.person_id for m in messages],
         [m.course_id for m in messages], [m.kind for m in messages],
         [m.unsubscribable for m in messages], OUTBOX_CHANNEL),
    )
    return cursor.fetchone()[0]
