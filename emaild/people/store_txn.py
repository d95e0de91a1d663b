"""
The people store's functions that run inside a caller's transaction (they
take the cursor first): people, courses and course memberships.  An LTI
launch, a CSV import and a membership made by hand compose them in one
transaction.
"""

from __future__ import annotations

import psycopg2

from emaild.people.records import COURSE_COLUMNS, PERSON_COLUMNS, Course, Person, PersonError


async def set_email_txn(cursor, person_id: int, email: str) -> int | None:
    """
    Give the person C{email}; when another person has that address, leave
    the address unchanged and return that person's id.
    """
    await cursor.execute("SELECT email FROM people WHERE id = %s", (person_id,))
    (current,) = cursor.fetchone()
    if current == email:
        return None
    # the unique index decides (also against a concurrent transaction); the
    # savepoint keeps the launch's transaction usable when it says no
    await cursor.execute("SAVEPOINT set_email")
    try:
        await cursor.execute("UPDATE people SET email = %s, updated_at = now() WHERE id = %s",
                             (email, person_id))
    except psycopg2.IntegrityError:
        await cursor.execute("ROLLBACK TO SAVEPOINT set_email")
        await cursor.execute("SELECT id FROM people WHERE lower(email) = lower(%s)", (email,))
        other = cursor.fetchone()
        return other[0] if other else None
    await cursor.execute("RELEASE SAVEPOINT set_email")
    return None


async def upsert_person_txn(cursor, email: str, display_name: str) -> tuple[Person, bool]:
    """
    Add a person by (checked) address or update the name of the one who has
    it (an empty name keeps the stored one); returns the person and whether
    they are new.
    """
    await cursor.execute(
        "INSERT INTO people (email, display_name) VALUES (%s, %s)"
        " ON CONFLICT (lower(email)) DO UPDATE SET"
        "   display_name = CASE WHEN EXCLUDED.display_name = ''"
        "     THEN people.display_name ELSE EXCLUDED.display_name END,"
        "   updated_at = now()"
        f" RETURNING {PERSON_COLUMNS}, xmax = 0", (email, display_name or ""))
    *person, created = cursor.fetchone()
    return Person(*person), created


async def ensure_course_txn(cursor, consumer_key: str, context_id: str, title: str = "") -> int:
    await cursor.execute(
        "INSERT INTO courses (consumer_key, context_id, title) VALUES (%s, %s, %s)"
        " ON CONFLICT (consumer_key, context_id) DO UPDATE SET title = CASE"
        "   WHEN EXCLUDED.title = '' THEN courses.title ELSE EXCLUDED.title END"
        " RETURNING id", (consumer_key, context_id, title or ""))
    return cursor.fetchone()[0]


async def course_by_key_txn(cursor, key: str) -> Course | PersonError:
    await cursor.execute(
        f"SELECT {COURSE_COLUMNS} FROM courses WHERE context_id = %s"
        " ORDER BY consumer_key <> '', consumer_key, id", (key,))
    found = [Course(*row) for row in cursor.fetchall()]
    if not found:
        return Course(await ensure_course_txn(cursor, "", key), "", key, "")
    if found[0].consumer_key == "" or len(found) == 1:
        return found[0]
    consumers = ", ".join(repr(c.consumer_key) for c in found)
    return PersonError(f"course {key!r} is ambiguous: LTI consumers {consumers} each have a "
                       "course with that id")


async def join_course_txn(cursor, course_id: int, person_id: int, roles: list[str],
                       launched: bool = False) -> None:
    await cursor.execute(
        "INSERT INTO course_members (course_id, person_id, roles, last_launch_at)"
        " VALUES (%s, %s, %s::text[], CASE WHEN %s THEN now() END)"
        " ON CONFLICT (course_id, person_id) DO UPDATE SET"
        "   roles = CASE WHEN cardinality(EXCLUDED.roles) = 0 THEN course_members.roles"
        "           ELSE EXCLUDED.roles END,"
        "   last_launch_at = coalesce(EXCLUDED.last_launch_at, course_members.last_launch_at)",
        (course_id, person_id, list(roles), launched))
