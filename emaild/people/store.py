"""
The people part's tables: C{people}, C{lti_identities}, C{courses},
C{course_members}, C{groups}, C{group_members}.
"""

from __future__ import annotations

import builtins
from typing import Iterable, Sequence

import attrs
import psycopg2

from emaild.people.roles import is_staff as any_staff_role


@attrs.frozen
class Person:
    id: int
    #: current address, or None when we were never given one
    email: str | None
    display_name: str


_PERSON = "id, email, display_name"


@attrs.frozen
class Course:
    id: int
    #: the LTI consumer's key; '' for a course made by hand
    consumer_key: str
    #: the LMS's context_id; for a course made by hand, the key it was given
    context_id: str
    title: str


_COURSE = "id, consumer_key, context_id, title"


@attrs.frozen
class Membership:
    course: Course
    #: LTI roles as sent (empty for a member added by hand)
    roles: tuple[str, ...]


@attrs.frozen
class PersonDetails:
    person: Person
    #: (consumer key, LTI user_id) of each LTI identity
    identities: tuple[tuple[str, str], ...]
    courses: tuple[Membership, ...]
    #: (course context_id, group name) of each group they currently belong to
    groups: tuple[tuple[str, str], ...]


@attrs.frozen
class LtiOutcome:
    """
    What L{PeopleStore.upsert_from_lti} did.
    """

    person_id: int
    #: a new person was made
    created: bool
    #: a new LTI identity was linked to an existing person by address
    linked: bool
    #: the launch's course and group, when it named them
    course_id: int | None
    group_id: int | None
    #: the launch's address already belongs to this other person, so the
    #: person kept their old address
    email_conflict: int | None


@attrs.frozen
class CourseMember:
    person_id: int
    email: str | None
    display_name: str
    roles: builtins.list[str]


@attrs.frozen
class CourseOfPerson:
    """
    A course a person belongs to: its title (the context id when it has
    none) and the person's roles in it.
    """

    course_id: int
    title: str
    roles: list[str]


@attrs.frozen
class GroupOfPerson:
    """
    A group a person is a current member of, with its course's title.
    """

    group_id: int
    name: str
    course_title: str


class PersonError(ValueError):
    """
    A person cannot be stored as asked; the message says why.
    """


class PeopleStore:
    def __init__(self, db):
        self.db = db

    async def add(self, email: str | None, display_name: str = "") -> Person:
        """
        Create a person, or update the display name of the one with this
        address (addresses are unique, case-insensitively).
        """
        rows = await self.db.runQuery(
            f"INSERT INTO people (email, display_name) VALUES (%s, %s)"
            f" ON CONFLICT (lower(email)) DO UPDATE SET"
            f"   display_name = CASE WHEN EXCLUDED.display_name = '' THEN people.display_name"
            f"                  ELSE EXCLUDED.display_name END, updated_at = now()"
            f" RETURNING {_PERSON}",
            (email, display_name or ""),
        )
        return Person(*rows[0])

    async def get(self, person_id: int) -> Person | None:
        rows = await self.db.runQuery(f"SELECT {_PERSON} FROM people WHERE id = %s", (person_id,))
        return Person(*rows[0]) if rows else None

    async def get_many(self, person_ids: Iterable[int]) -> dict[int, Person]:
        ids = sorted(set(person_ids))
        if not ids:
            return {}
        rows = await self.db.runQuery(
            f"SELECT {_PERSON} FROM people WHERE id = ANY(%s)", (ids,))
        return {row[0]: Person(*row) for row in rows}

    async def by_email(self, email: str) -> Person | None:
        rows = await self.db.runQuery(
            f"SELECT {_PERSON} FROM people WHERE lower(email) = lower(%s)", (email,))
        return Person(*rows[0]) if rows else None

    async def list(self, limit: int = 100, offset: int = 0,
                   course: str | None = None) -> builtins.list[Person]:
        """
        People by id; with C{course}, only members of a course whose
        C{context_id} is C{course} (for any consumer; a course made by hand
        has consumer key '' and its key as context_id).
        """
        if course is None:
            rows = await self.db.runQuery(
                f"SELECT {_PERSON} FROM people ORDER BY id LIMIT %s OFFSET %s", (limit, offset))
        else:
            rows = await self.db.runQuery(
                f"SELECT {_PERSON} FROM people p WHERE EXISTS ("
                "   SELECT 1 FROM course_members m JOIN courses c ON c.id = m.course_id"
                "   WHERE m.person_id = p.id AND c.context_id = %s)"
                " ORDER BY id LIMIT %s OFFSET %s", (course, limit, offset))
        return [Person(*row) for row in rows]

    async def courses_of(self, person_id: int) -> builtins.list[CourseOfPerson]:
        """
        Every course the person belongs to.
        """
        rows = await self.db.runQuery(
            "SELECT c.id, coalesce(nullif(c.title, ''), c.context_id), m.roles"
            " FROM course_members m JOIN courses c ON c.id = m.course_id"
            " WHERE m.person_id = %s ORDER BY c.id", (person_id,))
        return [CourseOfPerson(r[0], r[1], list(r[2])) for r in rows]

    async def groups_of(self, person_id: int) -> builtins.list[GroupOfPerson]:
        """
        Every group the person is a current member of.
        """
        rows = await self.db.runQuery(
            "SELECT g.id, g.name, coalesce(nullif(c.title, ''), c.context_id)"
            " FROM group_members m JOIN groups g ON g.id = m.group_id"
            " JOIN courses c ON c.id = g.course_id"
            " WHERE m.person_id = %s AND m.left_at IS NULL ORDER BY g.id", (person_id,))
        return [GroupOfPerson(*r) for r in rows]

    async def roles(self, course_id: int, person_id: int) -> builtins.list[str] | None:
        """
        The person's roles in the course, or None when not a member.
        """
        rows = await self.db.runQuery(
            "SELECT roles FROM course_members WHERE course_id = %s AND person_id = %s",
            (course_id, person_id))
        return list(rows[0][0]) if rows else None

    async def is_staff(self, course_id: int, person_id: int) -> bool:
        return any_staff_role(await self.roles(course_id, person_id) or ())

    async def course_members(self, course_id: int) -> builtins.list[CourseMember]:
        rows = await self.db.runQuery(
            "SELECT p.id, p.email, p.display_name, m.roles FROM course_members m"
            " JOIN people p ON p.id = m.person_id WHERE m.course_id = %s"
            " ORDER BY lower(p.display_name), p.id", (course_id,))
        return [CourseMember(r[0], r[1], r[2], list(r[3])) for r in rows]

    async def ids_by_email(self, addresses: Iterable[str]) -> dict[str, int]:
        """
        {lower-cased address: person id} of the known people among C{addresses}.
        """
        wanted = sorted({a.strip().lower() for a in addresses if a and a.strip()})
        if not wanted:
            return {}
        rows = await self.db.runQuery(
            "SELECT lower(email), id FROM people WHERE lower(email) = ANY(%s)", (wanted,))
        return dict(rows)

    # -- LTI launches ----------------------------------------------------------
    async def upsert_from_lti(self, *, consumer_key: str, user_id: str, email: str | None,
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

        return await self.db.transaction(upsert)

    # -- courses and groups ----------------------------------------------------
    async def ensure_course(self, consumer_key: str, context_id: str, title: str = "") -> int:
        """
        The id of the course (C{consumer_key}, C{context_id}), created if
        needed; a non-empty C{title} replaces the stored one.  A course made
        by hand has consumer key ''.
        """
        return await self.db.transaction(
            lambda cursor: ensure_course_txn(cursor, consumer_key, context_id, title))

    async def join_course(self, course_id: int, person_id: int, roles: Sequence[str] = ()) -> None:
        """
        Make the person a member of the course; non-empty C{roles} replace
        their roles there.
        """
        await self.db.transaction(
            lambda cursor: join_course_txn(cursor, course_id, person_id, list(roles)))

    async def ensure_group(self, course_id: int, name: str) -> int:
        """
        The id of the group called C{name} in the course, created if needed.
        """
        return await self.db.transaction(lambda cursor: ensure_group_txn(cursor, course_id, name))

    async def join_group(self, group_id: int, person_id: int) -> None:
        """
        Make the person a current member of the group (again, if they left).
        """
        await self.db.transaction(lambda cursor: join_group_txn(cursor, group_id, person_id))

    async def find_courses(self, key: str) -> builtins.list[Course]:
        """
        The courses whose C{context_id} is C{key}: the one made by hand
        (consumer key '') first, then those of LTI consumers.
        """
        rows = await self.db.runQuery(
            f"SELECT {_COURSE} FROM courses WHERE context_id = %s"
            " ORDER BY consumer_key <> '', consumer_key, id", (key,))
        return [Course(*row) for row in rows]

    async def courses(self, course_ids: Iterable[int]) -> dict[int, Course]:
        ids = sorted(set(course_ids))
        if not ids:
            return {}
        rows = await self.db.runQuery(f"SELECT {_COURSE} FROM courses WHERE id = ANY(%s)", (ids,))
        return {row[0]: Course(*row) for row in rows}

    # -- adding people by hand -------------------------------------------------
    async def add_person(self, email: str, display_name: str = "",
                         course: str | None = None) -> tuple[Person, bool, Course | None]:
        """
        Add a person by address (or update the name of the one who has it)
        and, with C{course}, make them a member of that course (see
        L{import_people} for how the course key is found).

        @return: the person, whether they are new, and the course.
        @raise PersonError: the course key is ambiguous.
        """
        (result,) = await self.import_people([(email, display_name, course)])
        if isinstance(result, PersonError):
            raise result
        return result

    async def import_people(self, rows: Sequence[tuple[str, str, str | None]]
                            ) -> builtins.list[tuple[Person, bool, Course | None] | PersonError]:
        """
        Add or update each (address, name, course key or None) in one
        transaction; return, per row, (person, new?, course) or the
        L{PersonError} that kept the row out.  Addresses must already be
        checked; an empty name keeps the stored one.

        A course key names the course whose C{context_id} it is: the one made
        by hand if there is one, else the only LTI course with that id; when
        there is none, a course is made by hand (consumer key '',
        C{context_id} = the key).  A key several LTI consumers use is
        ambiguous and the row is refused.
        """

        async def add_all(cursor):
            courses: dict[str, Course | PersonError] = {}
            results: builtins.list[tuple[Person, bool, Course | None] | PersonError] = []
            for email, display_name, key in rows:
                course: Course | None = None
                if key:
                    if key not in courses:
                        courses[key] = await course_by_key_txn(cursor, key)
                    found = courses[key]
                    if isinstance(found, PersonError):
                        results.append(found)
                        continue
                    course = found
                person, created = await upsert_person_txn(cursor, email, display_name)
                if course is not None:
                    await join_course_txn(cursor, course.id, person.id, [])
                results.append((person, created, course))
            return results

        return await self.db.transaction(add_all)

    # -- listing -----------------------------------------------------------------
    async def directory(self, course: str | None = None) -> builtins.list[PersonDetails]:
        """
        Everybody (or the members of the courses whose C{context_id} is
        C{course}) with their LTI identities, courses and current groups,
        ordered by id.
        """
        if course is None:
            people = await self.db.runQuery(f"SELECT {_PERSON} FROM people ORDER BY id")
        else:
            people = await self.db.runQuery(
                f"SELECT {_PERSON} FROM people p WHERE EXISTS ("
                "   SELECT 1 FROM course_members m JOIN courses c ON c.id = m.course_id"
                "   WHERE m.person_id = p.id AND c.context_id = %s)"
                " ORDER BY id", (course,))
        ids = [row[0] for row in people]
        identities: dict[int, list[tuple[str, str]]] = {}
        memberships: dict[int, list[Membership]] = {}
        groups: dict[int, list[tuple[str, str]]] = {}
        if ids:
            for person_id, key, user_id in await self.db.runQuery(
                    "SELECT person_id, consumer_key, user_id FROM lti_identities"
                    " WHERE person_id = ANY(%s) ORDER BY person_id, created_at, consumer_key,"
                    " user_id", (ids,)):
                identities.setdefault(person_id, []).append((key, user_id))
            for person_id, *course_row, roles in await self.db.runQuery(
                    "SELECT m.person_id, c.id, c.consumer_key, c.context_id, c.title, m.roles"
                    " FROM course_members m JOIN courses c ON c.id = m.course_id"
                    " WHERE m.person_id = ANY(%s) ORDER BY m.person_id, c.id", (ids,)):
                memberships.setdefault(person_id, []).append(
                    Membership(Course(*course_row), tuple(roles)))
            for person_id, context_id, name in await self.db.runQuery(
                    "SELECT m.person_id, c.context_id, g.name"
                    " FROM group_members m JOIN groups g ON g.id = m.group_id"
                    " JOIN courses c ON c.id = g.course_id"
                    " WHERE m.person_id = ANY(%s) AND m.left_at IS NULL"
                    " ORDER BY m.person_id, g.id", (ids,)):
                groups.setdefault(person_id, []).append((context_id, name))
        return [PersonDetails(Person(*row), tuple(identities.get(row[0], ())),
                              tuple(memberships.get(row[0], ())), tuple(groups.get(row[0], ())))
                for row in people]


# -- in-transaction helpers ------------------------------------------------------


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
        f" RETURNING {_PERSON}, xmax = 0", (email, display_name or ""))
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
        f"SELECT {_COURSE} FROM courses WHERE context_id = %s"
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


async def ensure_group_txn(cursor, course_id: int, name: str, report: bool = False):
    """
    The group's id (with C{report}: and whether it was made now).
    """
    await cursor.execute(
        "INSERT INTO groups (course_id, name) VALUES (%s, %s)"
        " ON CONFLICT (course_id, name) DO NOTHING RETURNING id", (course_id, name))
    row = cursor.fetchone()
    created = row is not None
    if row is None:
        await cursor.execute("SELECT id FROM groups WHERE course_id = %s AND name = %s",
                             (course_id, name))
        row = cursor.fetchone()
    return (row[0], created) if report else row[0]


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


async def join_group_txn(cursor, group_id: int, person_id: int) -> None:
    await cursor.execute(
        "INSERT INTO group_members (group_id, person_id) VALUES (%s, %s)"
        " ON CONFLICT (group_id, person_id) DO UPDATE SET left_at = NULL, joined_at = now(),"
        # a new reply address: the one they had before leaving stays dead
        "   reply_secret_hi = emaild_random32(), reply_secret_lo = emaild_random32()"
        " WHERE group_members.left_at IS NOT NULL", (group_id, person_id))


# -- LTI 1.3 launches (appended; see emaild.people.lti13) ------------------------


async def upsert_from_lti13(db, *, issuer: str, sub: str, email: str | None,
                            display_name: str = "", roles: Sequence[str] = (),
                            course_key: str, context_id: str | None = None,
                            context_title: str = "", group: str | None = None,
                            lti11_identity: tuple[str, str] | None = None) -> LtiOutcome:
    """
    L{PeopleStore.upsert_from_lti} for a verified LTI 1.3 launch, in one
    transaction.  The identity is (C{issuer}, C{sub}) in C{lti13_identities};
    the course is (C{course_key}, C{context_id}).

    A new identity is linked, in this order, to the person of
    C{lti11_identity} (the (consumer key, user_id) of a checked LTI 1.1
    migration claim: the person an earlier 1.1 launch made), else to the
    person with the launch's address (the platform vouches for it, as in 1.1),
    else to a new person.  L{LtiOutcome.linked} says it was linked.
    """
    roles = [r for r in roles if r]

    async def upsert(cursor) -> LtiOutcome:
        lock = f"emaild lti13 identity {len(issuer)}:{issuer}{sub}"
        await cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock,))
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

    return await db.transaction(upsert)


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
