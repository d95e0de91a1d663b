"""
The notifications part's tables: C{group_activity_notices} and
C{group_activity_recipients} (migration 0010).

Which members are candidates (current, with an address, not seen on a
group page lately) the notifier asks the groups store
(L{emaild.groups.store.GroupStore.quiet_members}).  Who is signed in (C{web_sessions}) and who turned the notification kind off
(C{mail_optouts}) the notifier asks the web and outbound stores
(L{emaild.web.sessions.SessionStore.seen_since},
L{emaild.outbound.store.OutboxStore.opted_out}); the sender checks opt-outs
again when it claims the mail.
"""

from __future__ import annotations

import datetime
from typing import Sequence

import attrs

#: advisory lock classes (the two-key form: class, id)
ACTIVE_LOCK = 0x6E6F7469  # "noti": one (actor, group) at a time
DAILY_LOCK = 0x6E6F7464  # "notd": one recipient's daily count at a time


def _key(value: int) -> int:
    """An id as the int4 the two-key advisory lock functions take."""
    return value % 2147483647


def utc_day(now: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date()


@attrs.frozen
class Notice:
    """
    A group-activity notice: who did something in which group, and when.
    """

    notice_id: int
    group_id: int
    actor_id: int
    at: datetime.datetime


class NotifyStore:
    def __init__(self, db):
        self.db = db

    async def claim(self, group_id: int, actor_id: int, candidates: Sequence[int], now: float,
                    active_window: float, daily_limit: int):
        """
        In one transaction, under advisory locks (so every emaild process on
        the database agrees): unless the actor already had a notice in this
        group within C{active_window} seconds before C{now}, record a new
        notice for those C{candidates} still under C{daily_limit} notices on
        C{now}'s UTC day.  Fires with (notice id, [recipient ids]), or None
        when nothing is to be sent.
        """
        return await self.db.transaction(self._claim, group_id, actor_id, sorted(set(candidates)),
                                         now, active_window, daily_limit)

    @staticmethod
    async def _claim(cursor, group_id, actor_id, candidates, now, active_window, daily_limit):
        if not candidates or daily_limit <= 0:
            return None
        # one (actor, group) at a time; then recipients in id order: every
        # transaction takes one pair lock first and recipient locks in the
        # same order, so they cannot deadlock
        await cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                             (ACTIVE_LOCK, _key(actor_id * 1000003 + group_id)))
        await cursor.execute(
            "SELECT 1 FROM group_activity_notices WHERE group_id = %s AND actor_id = %s"
            " AND at > to_timestamp(%s) LIMIT 1", (group_id, actor_id, now - active_window))
        if cursor.fetchone() is not None:
            return None
        day = utc_day(now)
        for person_id in candidates:
            await cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)",
                                 (DAILY_LOCK, _key(person_id)))
        await cursor.execute(
            "SELECT recipient_id, count(*) FROM group_activity_recipients"
            " WHERE recipient_id = ANY(%s) AND day = %s GROUP BY recipient_id",
            (list(candidates), day))
        counts = dict(cursor.fetchall())
        recipients = [p for p in candidates if counts.get(p, 0) < daily_limit]
        if not recipients:
            return None
        await cursor.execute(
            "INSERT INTO group_activity_notices (group_id, actor_id, at)"
            " VALUES (%s, %s, to_timestamp(%s)) RETURNING id", (group_id, actor_id, now))
        (notice_id,) = cursor.fetchone()
        await cursor.execute(
            "INSERT INTO group_activity_recipients (notice_id, recipient_id, day)"
            " SELECT %s, r, %s FROM unnest(%s::bigint[]) AS r", (notice_id, day, recipients))
        return notice_id, recipients

    async def forget(self, notice_id: int, recipients: Sequence[int] | None = None) -> None:
        """
        Undo a claim whose mail could not be queued (all of it, or only the
        C{recipients} that were refused), so it counts against no limit.
        """
        if recipients is None:
            await self.db.runOperation(
                "DELETE FROM group_activity_notices WHERE id = %s", (notice_id,))
        elif recipients:
            await self.db.runOperation(
                "DELETE FROM group_activity_recipients WHERE notice_id = %s"
                " AND recipient_id = ANY(%s)", (notice_id, list(recipients)))

    async def notices(self, group_id: int | None = None) -> list[Notice]:
        """
        The notices, newest first (for operators and tests).
        """
        return [Notice(*row) for row in await self.db.runQuery(
            "SELECT id, group_id, actor_id, at FROM group_activity_notices"
            " WHERE %s::bigint IS NULL OR group_id = %s ORDER BY at DESC, id DESC",
            (group_id, group_id))]
