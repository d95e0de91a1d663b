"""
The holds' table, C{inbound_holds}: group posts kept until their member
confirms them, and the received message they belong to (stored here in the
same transaction as its hold and the confirmation mail, so a post is never
held without its question, nor the question sent about nothing).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import attrs
from psycopg2 import Binary

from emaild.groups.relations import GROUPS
from emaild.inbound.records import Recipient
from emaild.inbound.store import INBOUND_CHANNEL, RELAY
from emaild.outbound.enqueue_store import insert_messages_txn

WAITING, SENT, DISCARDED, EXPIRED = "waiting", "sent", "discarded", "expired"
EXPIRED_REASON = "not relayed: the member did not confirm it before the link expired"


@attrs.frozen
class Hold:
    id: int
    message_id: int
    person_id: int | None
    group_id: int | None
    link_id: int
    state: str
    reason: str
    created_at: datetime.datetime
    decided_at: datetime.datetime | None
    #: from the received message
    received_at: datetime.datetime
    peer: str
    helo: str
    raw: bytes
    #: the group's name ('' if it is gone)
    group_name: str


@attrs.frozen
class HeldMessage:
    """What to store for a held post."""

    peer: str
    helo: str
    tls: bool
    mail_from: str
    recipients: Sequence[Recipient]
    raw: bytes
    authentication: str
    person_id: int
    group_id: int | None
    reason: str


class HoldStore:
    def __init__(self, db):
        self.db = db

    def hold(self, message: HeldMessage, link_id: int, expires_at: float, template: str, qos,
             confirmation):
        """
        Store the message with its relay recipients C{held}, its hold and
        the confirmation mail (a L{Rendered}) in one transaction.  Fires
        with the message id.
        """

        async def run(cursor):
            recipients = message.recipients
            await cursor.execute(
                "WITH m AS (INSERT INTO inbound_messages (peer, helo, tls, mail_from, size, raw,"
                "   authentication) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id),"
                " r AS (INSERT INTO inbound_recipients (message_id, address, purpose, group_id,"
                "   person_id, link_id, outbox_id, state, reason)"
                "   SELECT m.id, a, p, g, pe, l, o,"
                "     CASE WHEN p = %s THEN 'held' ELSE 'received' END,"
                "     CASE WHEN p = %s THEN %s END"
                "   FROM m, unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[],"
                "     %s::bigint[], %s::bigint[]) AS v(a, p, g, pe, l, o)),"
                " h AS (INSERT INTO inbound_holds (message_id, person_id, group_id, link_id,"
                "   reason, expires_at) SELECT m.id, %s, %s, %s, %s, to_timestamp(%s) FROM m)"
                " SELECT m.id, pg_notify(%s, '') FROM m",
                (message.peer, message.helo, message.tls, message.mail_from, len(message.raw),
                 Binary(message.raw), message.authentication, RELAY, RELAY,
                 f"held until the member confirms it: {message.reason}"[:500],
                 [r.address for r in recipients], [r.purpose for r in recipients],
                 [r.group_id for r in recipients], [r.person_id for r in recipients],
                 [r.link_id for r in recipients], [r.outbox_id for r in recipients],
                 message.person_id, message.group_id, link_id, message.reason[:500],
                 expires_at, INBOUND_CHANNEL))
            message_id = cursor.fetchone()[0]
            await insert_messages_txn(cursor, template, qos, [confirmation],
                                                batch=f"hold of inbound message {message_id}")
            return message_id

        return self.db.transaction(run)

    async def by_link(self, link_id: int) -> Hold | None:
        rows = await self.db.runQuery(
            "SELECT h.id, h.message_id, h.person_id, h.group_id, h.link_id, h.state, h.reason,"
            " h.created_at, h.decided_at, m.received_at, m.peer, m.helo, m.raw,"
            " coalesce(g.name, '')"
            " FROM inbound_holds h JOIN inbound_messages m ON m.id = h.message_id"
            f" LEFT JOIN {GROUPS} g ON g.id = h.group_id WHERE h.link_id = %s", (link_id,))
        if not rows:
            return None
        row = list(rows[0])
        row[12] = bytes(row[12])
        return Hold(*row)

    def answer(self, link_id: int, send: bool):
        """
        Record the member's answer to a waiting hold: C{send} releases its
        recipients to the relay processor (and wakes it), otherwise they are
        C{ignored}.  Fires with the hold's state afterwards (the earlier
        answer if there was one), or None for no such hold.
        """

        async def run(cursor):
            await cursor.execute(
                "UPDATE inbound_holds SET state = %s, decided_at = now()"
                " WHERE link_id = %s AND state = %s RETURNING message_id",
                (SENT if send else DISCARDED, link_id, WAITING))
            row = cursor.fetchone()
            if row is None:
                await cursor.execute("SELECT state FROM inbound_holds WHERE link_id = %s",
                                     (link_id,))
                found = cursor.fetchone()
                return found[0] if found else None
            if send:
                await cursor.execute(
                    "UPDATE inbound_recipients SET state = 'received', reason = NULL"
                    " WHERE message_id = %s AND state = 'held'", (row[0],))
                await cursor.execute("SELECT pg_notify(%s, '')", (INBOUND_CHANNEL,))
            else:
                await cursor.execute(
                    "UPDATE inbound_recipients SET state = 'ignored', processed_at = now(),"
                    " reason = 'discarded: the member said they did not send it'"
                    " WHERE message_id = %s AND state = 'held'", (row[0],))
            return SENT if send else DISCARDED

        return self.db.transaction(run)

    async def expire(self) -> int:
        """
        Give up on holds whose link has expired: their recipients become
        C{ignored} with L{EXPIRED_REASON}.  Returns how many holds expired.
        """
        rows = await self.db.runQuery(
            "WITH e AS (UPDATE inbound_holds SET state = %s, decided_at = now()"
            "   WHERE state = %s AND expires_at <= now() RETURNING message_id),"
            " r AS (UPDATE inbound_recipients SET state = 'ignored', reason = %s,"
            "   processed_at = now() FROM e"
            "   WHERE inbound_recipients.message_id = e.message_id"
            "   AND inbound_recipients.state = 'held')"
            " SELECT count(*) FROM e", (EXPIRED, WAITING, EXPIRED_REASON))
        return rows[0][0]
