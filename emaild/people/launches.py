"""
What a verified LTI launch (1.1 or 1.3) and a roster sync (LTI 1.3 Names
and Role Provisioning Services) write: the person, their identity, their
course membership and, when the launch names one, their group membership;
each launch or roster chunk in one transaction.  The group membership is
written through the groups part's store (L{emaild.groups.store}).
"""

from __future__ import annotations

from typing import Sequence

import attrs

from emaild.groups.store import ensure_group_txn, join_group_txn
from emaild.people.records import LtiOutcome
from emaild.people.store_txn import (
    ensure_course_txn,
    join_course_txn,
    set_email_txn,
    upsert_person_txn,
)


async def upsert_from_lti11(db, *, consumer_key: str, user_id: str, email: str | None,
                          display_name: str = "", roles: Sequence[str] = (),
                          context_id: str | None = None, context_title: str = "",
                          group: str | None = None) -> LtiOutcome:
    """
    Create or update the person a verified LTI launch is about, their
    course membership (with the launch's roles) and, when C{group} is
    given, their membership of that group of the course; all in one
    transaction.

    The identity (C{consumer_key}, C{user_id}) always maps to the same
    person.  A new identity whose address matches an existing person is
    linked to that person: the launch is signed with the consumer's
    shared secret, so the LMS vouches that this user owns the address
    (it is how a learner who was imported by hand, or who arrives from a
    second LMS, keeps one account and one set of mail preferences).  An
    identity seen before gets the launch's name and address; when the
    address belongs to somebody else already, the person keeps their old
    address (reported in L{LtiOutcome.email_conflict}) rather than
    failing the launch.  An absent name or address never erases the one
    we have.
    """
    roles = [r for r in roles if r]

    async def upsert(cursor) -> LtiOutcome:
        # launches of one identity run one at a time (a double-clicked
        # launch must not make two people)
        lock = f"emaild lti identity {len(consumer_key)}:{consumer_key}{user_id}"
        await cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                             (lock,))
        await cursor.execute(
            "SELECT person_id FROM lti_identities WHERE consumer_key = %s AND user_id = %s",
            (consumer_key, user_id))
        row = cursor.fetchone()
        created = linked = False
        conflict = None
        if row is not None:
            person_id = row[0]
            if display_name:
                await cursor.execute(
                    "UPDATE people SET display_name = %s, updated_at = now()"
                    " WHERE id = %s AND display_name <> %s",
                    (display_name, person_id, display_name))
            if email:
                conflict = await set_email_txn(cursor, person_id, email)
        else:
            if email:
                await cursor.execute(
                    "INSERT INTO people (email, display_name) VALUES (%s, %s)"
                    " ON CONFLICT (lower(email)) DO UPDATE SET email = EXCLUDED.email,"
                    "   display_name = CASE WHEN EXCLUDED.display_name = ''"
                    "     THEN people.display_name ELSE EXCLUDED.display_name END,"
                    "   updated_at = now()"
                    " RETURNING id, xmax = 0", (email, display_name))
                person_id, created = cursor.fetchone()
                linked = not created
            else:
                await cursor.execute(
                    "INSERT INTO people (email, display_name) VALUES (NULL, %s) RETURNING id",
                    (display_name,))
                person_id, created = cursor.fetchone()[0], True
            await cursor.execute(
                "INSERT INTO lti_identities (consumer_key, user_id, person_id)"
                " VALUES (%s, %s, %s)", (consumer_key, user_id, person_id))
        course_id, group_id = await join_launch_context_txn(
            cursor, person_id, consumer_key, context_id, context_title, roles, group)
        return LtiOutcome(person_id=person_id, created=created, linked=linked,
                          course_id=course_id, group_id=group_id, email_conflict=conflict)

    return await db.transaction(upsert)

async def join_launch_context_txn(cursor, person_id: int, course_key: str, context_id: str | None,
                                  context_title: str, roles: list[str], group: str | None
                                  ) -> tuple[int | None, int | None]:
    """
    What an LTI launch (1.1 or 1.3) makes of its context: the course (by
    C{course_key} and C{context_id}) with the person as a member in
    C{roles}, and the named group with them in it; (course id, group id),
    None for what the launch did not name.
    """
    if not context_id:
        return None, None
    course_id = await ensure_course_txn(cursor, course_key, context_id, context_title)
    await join_course_txn(cursor, course_id, person_id, roles, launched=True)
    if not group:
        return course_id, None
    group_id = await ensure_group_txn(cursor, course_id, group)
    await join_group_txn(cursor, group_id, person_id)
    return course_id, group_id


@attrs.frozen
class RosterMember:
    """
    One member of an NRPS membership container, checked.
    """

    sub: str
    email: str | None
    display_name: str
    roles: tuple[str, ...]
    #: Active, Inactive or Deleted
    status: str


async def upsert_roster(db, *, issuer: str, course_id: int,
                        members: Sequence[RosterMember]) -> dict[str, int]:
    """
    Record a chunk of a course's roster (NRPS) in one transaction: each
    Active member's person (found by (C{issuer}, sub), else by address, else
    made), their course membership and roles (not a launch: C{last_launch_at}
    stays), and their C{lti13_roster} row; an Inactive or Deleted member
    leaves the course.  Returns counts: C{new}, C{updated}, C{left}.
    """
    counts = {"new": 0, "updated": 0, "left": 0}

    async def store(cursor):
        for member in members:
            await cursor.execute(
                "SELECT person_id FROM lti13_identities WHERE issuer = %s AND sub = %s",
                (issuer, member.sub))
            row = cursor.fetchone()
            if member.status != "Active":
                if row is not None:
                    counts["left"] += await leave_roster_txn(cursor, course_id, [row[0]],
                                                              member.status)
                continue
            if row is not None:
                person_id = row[0]
                if member.display_name:
                    await cursor.execute(
                        "UPDATE people SET display_name = %s, updated_at = now()"
                        " WHERE id = %s AND display_name <> %s",
                        (member.display_name, person_id, member.display_name))
                if member.email:
                    await set_email_txn(cursor, person_id, member.email)
                counts["updated"] += 1
            else:
                if member.email:
                    person, created = await upsert_person_txn(cursor, member.email,
                                                           member.display_name)
                    person_id = person.id
                else:
                    await cursor.execute(
                        "INSERT INTO people (email, display_name) VALUES (NULL, %s) RETURNING id",
                        (member.display_name,))
                    person_id, created = cursor.fetchone()[0], True
                await cursor.execute(
                    "INSERT INTO lti13_identities (issuer, sub, person_id) VALUES (%s, %s, %s)"
                    " ON CONFLICT DO NOTHING", (issuer, member.sub, person_id))
                counts["new" if created else "updated"] += 1
            await join_course_txn(cursor, course_id, person_id, list(member.roles))
            await cursor.execute(
                "INSERT INTO lti13_roster (course_id, person_id, status) VALUES (%s, %s, 'Active')"
                " ON CONFLICT (course_id, person_id) DO UPDATE SET status = 'Active',"
                "   synced_at = now(), left_at = NULL", (course_id, person_id))
        return counts

    return await db.transaction(store)


async def leave_roster_txn(cursor, course_id: int, person_ids: list[int], status: str) -> int:
    await cursor.execute(
        "INSERT INTO lti13_roster (course_id, person_id, status, left_at)"
        " SELECT %s, p, %s, now() FROM unnest(%s::bigint[]) p"
        " ON CONFLICT (course_id, person_id) DO UPDATE SET status = EXCLUDED.status,"
        "   synced_at = now(), left_at = coalesce(lti13_roster.left_at, now())",
        (course_id, status, person_ids))
    await cursor.execute(
        "DELETE FROM course_members WHERE course_id = %s AND person_id = ANY(%s)",
        (course_id, person_ids))
    return cursor.rowcount


async def end_roster(db, course_id: int, started_at) -> int:
    """
    After a complete roster sync that began at C{started_at}: members the
    previous rosters listed and this one did not have left the course.
    Returns how many left.
    """

    async def end(cursor):
        await cursor.execute(
            "SELECT person_id FROM lti13_roster WHERE course_id = %s AND left_at IS NULL"
            " AND synced_at < %s", (course_id, started_at))
        gone = [r[0] for r in cursor.fetchall()]
        return await leave_roster_txn(cursor, course_id, gone, "absent") if gone else 0

    return await db.transaction(end)
