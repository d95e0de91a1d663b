"""
What a verified LTI 1.3 launch writes, as functions that run inside the
sign-in transaction (L{emaild.web.routes_lti13.sign_in}), so that a launch
is one transaction: its login state used up and its nonce recorded
(L{emaild.people.lti13_states.LoginStates.use_txn}), the person, identity,
course and group (L{upsert_from_lti13_txn}), and the session, all committed
together or not at all.
"""

from __future__ import annotations

from typing import Sequence

from emaild.people.store import (
    LtiOutcome,
    join_launch_context_txn,
    set_email_txn,
    upsert_person_txn,
)


def identity_lock(issuer: str, sub: str) -> str:
    """
    The advisory lock key under which launches of one (issuer, sub) run
    one at a time (a double-clicked launch must not make two people).
    """
    return f"emaild lti13 identity {len(issuer)}:{issuer}{sub}"


async def lock_identity_txn(cursor, issuer: str, sub: str) -> None:
    await cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                         (identity_lock(issuer, sub),))


async def upsert_from_lti13_txn(cursor, *, issuer: str, sub: str, email: str | None,
                                display_name: str = "", roles: Sequence[str] = (),
                                course_key: str, context_id: str | None = None,
                                context_title: str = "", group: str | None = None,
                                lti11_identity: tuple[str, str] | None = None) -> LtiOutcome:
    """
    Create or update the person of a verified LTI 1.3 launch, their
    identity (C{issuer}, C{sub}) in C{lti13_identities}, their membership of
    the course (C{course_key}, C{context_id}) and of the named group.  The
    caller holds the identity's lock (L{identity_lock}) already.

    A new identity is linked, in this order, to the person of
    C{lti11_identity} (the (consumer key, user_id) of a checked LTI 1.1
    migration claim: the person an earlier 1.1 launch made), else to the
    person with the launch's address (the platform vouches for it, as in
    1.1), else to a new person.  L{LtiOutcome.linked} says it was linked.
    """
    roles = [r for r in roles if r]
    await cursor.execute(
        "SELECT person_id FROM lti13_identities WHERE issuer = %s AND sub = %s", (issuer, sub))
    row = cursor.fetchone()
    migrated = False
    if row is None and lti11_identity is not None:
        await cursor.execute(
            "SELECT person_id FROM lti_identities WHERE consumer_key = %s AND user_id = %s",
            lti11_identity)
        row = cursor.fetchone()
        if row is not None:
            await cursor.execute(
                "INSERT INTO lti13_identities (issuer, sub, person_id) VALUES (%s, %s, %s)",
                (issuer, sub, row[0]))
            migrated = True
    created = linked = False
    conflict = None
    if row is not None:
        person_id = row[0]
        linked = migrated
        if display_name:
            await cursor.execute(
                "UPDATE people SET display_name = %s, updated_at = now()"
                " WHERE id = %s AND display_name <> %s", (display_name, person_id, display_name))
        if email:
            conflict = await set_email_txn(cursor, person_id, email)
    else:
        if email:
            person, created = await upsert_person_txn(cursor, email, display_name)
            person_id, linked = person.id, not created
        else:
            await cursor.execute(
                "INSERT INTO people (email, display_name) VALUES (NULL, %s) RETURNING id",
                (display_name,))
            person_id, created = cursor.fetchone()[0], True
        await cursor.execute(
            "INSERT INTO lti13_identities (issuer, sub, person_id) VALUES (%s, %s, %s)",
            (issuer, sub, person_id))
    course_id, group_id = await join_launch_context_txn(
        cursor, person_id, course_key, context_id, context_title, roles, group)
    return LtiOutcome(person_id=person_id, created=created, linked=linked,
                      course_id=course_id, group_id=group_id, email_conflict=conflict)


async def lti13_identities_of(db, person_ids) -> dict[int, list[tuple[str, str]]]:
    """
    person id -> their LTI 1.3 identities, (issuer, sub), oldest first.
    """
    wanted = sorted(set(person_ids))
    found: dict[int, list[tuple[str, str]]] = {}
    if not wanted:
        return found
    for person_id, issuer, sub in await db.runQuery(
            "SELECT person_id, issuer, sub FROM lti13_identities WHERE person_id = ANY(%s)"
            " ORDER BY person_id, created_at, issuer, sub", (wanted,)):
        found.setdefault(person_id, []).append((issuer, sub))
    return found


async def roster_leavers(db, course_id: int) -> set[int]:
    """
    The people the course's roster (NRPS) says have left it (listed as
    Inactive or Deleted, or no longer listed) and who have not come back.
    """
    rows = await db.runQuery(
        "SELECT person_id FROM lti13_roster WHERE course_id = %s AND left_at IS NOT NULL",
        (course_id,))
    return {row[0] for row in rows}
