"""
The digest part's tables: C{digest_notes}, C{digest_runs}, C{digest_sent},
C{announcements} and C{announcement_recipients}.  It reads (never writes)
people, courses, groups and group posts, in its own statements, through
those parts' relations (L{emaild.people.relations},
L{emaild.groups.relations}); the outbox (an announcement's
progress and failures, by batch label) is read through
L{emaild.outbound.store.OutboxStore} and written through
L{emaild.outbound.store.insert_messages_txn} or L{emaild.outbound.outbox.Outbox}.

Functions taking a C{cursor} run inside a caller's transaction (a weekly
update chunk claims its learners and queues their mail in one).
"""

from __future__ import annotations

import datetime
import json
from typing import Sequence

import attrs

from emaild.groups.relations import CURRENT_GROUP_MEMBERS, GROUP_POSTS, GROUPS
from emaild.people.relations import COURSE_MEMBERS, COURSES, PEOPLE
from emaild.people.roles import STAFF_ROLE, is_staff, is_staff_role  # noqa: F401 (re-exported)

#: SQL: the course member C{m} is not staff (see L{STAFF_ROLE}); takes the
#: pattern as a parameter
_LEARNER = "NOT EXISTS (SELECT 1 FROM unnest(m.roles) r WHERE btrim(r) ~* %s)"


@attrs.frozen
class GroupActivity:
    group_id: int
    name: str
    #: subjects of the threads started in the window (newest first, at most 5)
    new_threads: tuple[str, ...]
    new_thread_count: int
    reply_count: int
    #: subjects of older threads that got replies (at most 5)
    active_threads: tuple[str, ...]
    #: (person id, display name) of who joined in the window (at most 10)
    new_members: tuple[tuple[int, str], ...]
    new_member_count: int

    @property
    def quiet(self) -> bool:
        return not (self.new_thread_count or self.reply_count or self.new_member_count)


@attrs.frozen
class Learner:
    person_id: int
    email: str | None
    display_name: str
    group_ids: tuple[int, ...]


@attrs.frozen
class Announcement:
    label: str
    template: str
    course_id: int | None
    group_id: int | None
    audience: str
    context: dict
    resend_of: str | None
    created_at: datetime.datetime
    rejected: int


_ANNOUNCEMENT = ("label, template, course_id, group_id, audience, context, resend_of,"
                 " created_at, rejected")


class DigestStore:
    def __init__(self, db):
        self.db = db

    # -- notes ------------------------------------------------------------------
    async def set_note(self, course_id: int, week: str, note: str,
                       set_by: int | None = None) -> None:
        """
        The staff text for (course, week); an empty one removes it.
        """
        note = note.strip()
        if not note:
            await self.db.runOperation(
                "DELETE FROM digest_notes WHERE course_id = %s AND week = %s", (course_id, week))
            return
        await self.db.runOperation(
            "INSERT INTO digest_notes (course_id, week, note, set_by) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (course_id, week) DO UPDATE SET note = EXCLUDED.note,"
            "   set_by = EXCLUDED.set_by, updated_at = now()",
            (course_id, week, note, set_by))

    async def note(self, course_id: int, week: str) -> str | None:
        rows = await self.db.runQuery(
            "SELECT note FROM digest_notes WHERE course_id = %s AND week = %s", (course_id, week))
        return rows[0][0] if rows else None

    # -- runs -------------------------------------------------------------------
    async def courses_to_run(self, week: str, course_ids: Sequence[int] | None = None) -> list[int]:
        """
        Courses with members whose update for C{week} is not finished.
        """
        rows = await self.db.runQuery(
            f"SELECT c.id FROM {COURSES} c"
            f" WHERE EXISTS (SELECT 1 FROM {COURSE_MEMBERS} m WHERE m.course_id = c.id)"
            "   AND NOT EXISTS (SELECT 1 FROM digest_runs r WHERE r.course_id = c.id"
            "                   AND r.week = %s AND r.finished_at IS NOT NULL)"
            "   AND (%s::bigint[] IS NULL OR c.id = ANY(%s::bigint[]))"
            " ORDER BY c.id", (week, course_ids, course_ids))
        return [r[0] for r in rows]

    async def start_run(self, course_id: int, week: str) -> None:
        await self.db.runOperation(
            "INSERT INTO digest_runs (course_id, week) VALUES (%s, %s)"
            " ON CONFLICT (course_id, week) DO NOTHING", (course_id, week))

    async def finish_run(self, course_id: int, week: str) -> None:
        await self.db.runOperation(
            "UPDATE digest_runs SET finished_at = now()"
            " WHERE course_id = %s AND week = %s AND finished_at IS NULL", (course_id, week))

    async def outcomes(self, course_id: int, week: str) -> dict[str, int]:
        rows = await self.db.runQuery(
            "SELECT outcome, count(*) FROM digest_sent WHERE course_id = %s AND week = %s"
            " GROUP BY outcome", (course_id, week))
        return {outcome: n for outcome, n in rows}

    async def group_activity(self, course_id: int, start: datetime.datetime,
                             end: datetime.datetime) -> dict[int, GroupActivity]:
        """
        What happened in each group of the course between C{start} and
        C{end}: a few rows per group, so memory follows the groups, not the
        learners.
        """
        counts = await self.db.runQuery(
            "SELECT g.id, g.name,"
            "  count(p.id) FILTER (WHERE p.thread_id IS NULL OR p.thread_id = p.id),"
            "  count(p.id) FILTER (WHERE p.thread_id IS NOT NULL AND p.thread_id <> p.id)"
            f" FROM {GROUPS} g LEFT JOIN {GROUP_POSTS} p ON p.group_id = g.id"
            "   AND p.created_at >= %s AND p.created_at < %s"
            " WHERE g.course_id = %s GROUP BY g.id, g.name", (start, end, course_id))
        threads = await self.db.runQuery(
            "SELECT group_id, subject, is_new FROM ("
            "  SELECT t.group_id, t.subject, t.created_at >= %s AS is_new, row_number() OVER"
            "    (PARTITION BY t.group_id, t.created_at >= %s ORDER BY max(p.created_at) DESC,"
            "     t.id DESC) AS n"
            f"  FROM {GROUP_POSTS} p JOIN {GROUP_POSTS} t ON t.id = coalesce(p.thread_id, p.id)"
            f"  JOIN {GROUPS} g ON g.id = p.group_id"
            "  WHERE g.course_id = %s AND p.created_at >= %s AND p.created_at < %s"
            "  GROUP BY t.group_id, t.id, t.subject, t.created_at) s"
            " WHERE n <= 5 ORDER BY group_id, n", (start, start, course_id, start, end))
        joined = await self.db.runQuery(
            "SELECT group_id, person_id, display_name, total FROM ("
            "  SELECT m.group_id, m.person_id, p.display_name,"
            "    count(*) OVER (PARTITION BY m.group_id) AS total,"
            "    row_number() OVER (PARTITION BY m.group_id ORDER BY m.joined_at, m.person_id) AS n"
            f"  FROM {CURRENT_GROUP_MEMBERS} m JOIN {GROUPS} g ON g.id = m.group_id"
            f"  JOIN {PEOPLE} p ON p.id = m.person_id"
            "  WHERE g.course_id = %s"
            "    AND m.joined_at >= %s AND m.joined_at < %s) s"
            " WHERE n <= 10 ORDER BY group_id, n", (course_id, start, end))
        new_threads: dict[int, list[str]] = {}
        active: dict[int, list[str]] = {}
        for group_id, subject, is_new in threads:
            (new_threads if is_new else active).setdefault(group_id, []).append(subject or "")
        members: dict[int, list[tuple[int, str]]] = {}
        member_counts: dict[int, int] = {}
        for group_id, person_id, name, total in joined:
            members.setdefault(group_id, []).append((person_id, name or ""))
            member_counts[group_id] = total
        return {
            gid: GroupActivity(gid, name, tuple(new_threads.get(gid, ())), started, replies,
                               tuple(active.get(gid, ())), tuple(members.get(gid, ())),
                               member_counts.get(gid, 0))
            for gid, name, started, replies in counts
        }

    # -- announcements ---------------------------------------------------------------
    async def create_announcement(self, label: str, template: str, *, course_id: int | None,
                                  group_id: int | None, audience: str, context: dict,
                                  created_by: int | None = None,
                                  resend_of: str | None = None) -> None:
        await self.db.runOperation(
            "INSERT INTO announcements (label, template, course_id, group_id, audience, context,"
            " created_by, resend_of) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s)",
            (label, template, course_id, group_id, audience, json.dumps(context), created_by,
             resend_of))

    async def save_contexts(self, label: str, contexts: Sequence[tuple[int, dict]]) -> None:
        if contexts:
            await self.db.runOperation(
                "INSERT INTO announcement_recipients (label, person_id, context)"
                " SELECT %s, p, c::jsonb FROM unnest(%s::bigint[], %s::text[]) AS v(p, c)"
                " ON CONFLICT (label, person_id) DO UPDATE SET context = EXCLUDED.context",
                (label, [p for p, _ in contexts], [json.dumps(c) for _, c in contexts]))

    async def contexts(self, label: str, person_ids: Sequence[int]) -> dict[int, dict]:
        rows = await self.db.runQuery(
            "SELECT person_id, context FROM announcement_recipients"
            " WHERE label = %s AND person_id = ANY(%s)", (label, list(person_ids)))
        return {p: c for p, c in rows}

    async def finish_announcement(self, label: str, rejected: int) -> None:
        await self.db.runOperation(
            "UPDATE announcements SET rejected = %s, finished_queueing_at = now()"
            " WHERE label = %s", (rejected, label))

    async def announcement(self, label: str) -> Announcement | None:
        rows = await self.db.runQuery(
            f"SELECT {_ANNOUNCEMENT} FROM announcements WHERE label = %s", (label,))
        return Announcement(*rows[0]) if rows else None

    async def announcements(self, course_id: int, limit: int = 20) -> list[Announcement]:
        rows = await self.db.runQuery(
            f"SELECT {_ANNOUNCEMENT} FROM announcements WHERE course_id = %s"
            " ORDER BY created_at DESC, label DESC LIMIT %s", (course_id, limit))
        return [Announcement(*r) for r in rows]

    async def resends(self, label: str) -> list[str]:
        rows = await self.db.runQuery(
            "SELECT label FROM announcements WHERE resend_of = %s ORDER BY created_at, label",
            (label,))
        return [r[0] for r in rows]

    async def count_members(self, *, course_id: int | None = None,
                            group_id: int | None = None) -> int:
        if group_id is not None:
            rows = await self.db.runQuery(
                f"SELECT count(*) FROM {CURRENT_GROUP_MEMBERS} m WHERE m.group_id = %s",
                (group_id,))
        else:
            rows = await self.db.runQuery(
                f"SELECT count(*) FROM {COURSE_MEMBERS} m WHERE m.course_id = %s", (course_id,))
        return rows[0][0]

    async def member_ids(self, *, course_id: int | None = None, group_id: int | None = None,
                         after: int = 0, limit: int = 500) -> list[int]:
        """
        The next C{limit} current members (by person id, after C{after}) of
        the course or the group.
        """
        if group_id is not None:
            rows = await self.db.runQuery(
                f"SELECT m.person_id FROM {CURRENT_GROUP_MEMBERS} m WHERE m.group_id = %s"
                " AND m.person_id > %s ORDER BY m.person_id LIMIT %s", (group_id, after, limit))
        else:
            rows = await self.db.runQuery(
                f"SELECT m.person_id FROM {COURSE_MEMBERS} m WHERE m.course_id = %s"
                " AND m.person_id > %s ORDER BY m.person_id LIMIT %s", (course_id, after, limit))
        return [r[0] for r in rows]


# -- inside a caller's transaction ---------------------------------------------------
async def claim_learners_txn(cursor, course_id: int, week: str, limit: int,
                         after: int = 0) -> tuple[list[int], int] | None:
    """
    Claim up to C{limit} learners of the course (person id above C{after})
    who have no row for this week yet; return them and the last person id
    looked at, or None when there are none left.  A learner another
    transaction claimed at the same moment is skipped once that one
    commits, so the list may be short, or empty, before the end.
    """
    await cursor.execute(
        f"SELECT m.person_id FROM {COURSE_MEMBERS} m"
        f" WHERE m.course_id = %s AND m.person_id > %s AND {_LEARNER}"
        "   AND NOT EXISTS (SELECT 1 FROM digest_sent d WHERE d.course_id = m.course_id"
        "                   AND d.week = %s AND d.person_id = m.person_id)"
        " ORDER BY m.person_id LIMIT %s", (course_id, after, STAFF_ROLE, week, limit))
    candidates = [r[0] for r in cursor.fetchall()]
    if not candidates:
        return None
    await cursor.execute(
        "INSERT INTO digest_sent (course_id, week, person_id)"
        " SELECT %s, %s, p FROM unnest(%s::bigint[]) WITH ORDINALITY AS v(p, n) ORDER BY n"
        " ON CONFLICT DO NOTHING RETURNING person_id", (course_id, week, candidates))
    return sorted(r[0] for r in cursor.fetchall()), candidates[-1]


async def learners_txn(cursor, course_id: int, person_ids: Sequence[int]) -> list[Learner]:
    """
    The people with their current groups in the course.
    """
    await cursor.execute(
        "SELECT p.id, p.email, p.display_name,"
        "  coalesce((SELECT array_agg(gm.group_id ORDER BY gm.group_id)"
        f"    FROM {CURRENT_GROUP_MEMBERS} gm JOIN {GROUPS} g ON g.id = gm.group_id"
        "    WHERE gm.person_id = p.id AND g.course_id = %s), '{}')"
        f" FROM {PEOPLE} p WHERE p.id = ANY(%s) ORDER BY p.id", (course_id, list(person_ids)))
    return [Learner(r[0], r[1], r[2] or "", tuple(r[3])) for r in cursor.fetchall()]


async def mark_sent_txn(cursor, course_id: int, week: str,
                    outcomes: Sequence[tuple[int, str, int | None]]) -> None:
    """
    Record what became of each claimed learner: (person id, outcome, outbox id).
    """
    if outcomes:
        await cursor.execute(
            "UPDATE digest_sent d SET outcome = v.o, outbox_id = v.b"
            " FROM unnest(%s::bigint[], %s::text[], %s::bigint[]) AS v(p, o, b)"
            " WHERE d.course_id = %s AND d.week = %s AND d.person_id = v.p",
            ([o[0] for o in outcomes], [o[1] for o in outcomes], [o[2] for o in outcomes],
             course_id, week))
