"""
The people part's store: C{people}, C{lti_identities}, C{courses} and
C{course_members} (and, through L{emaild.people.launches}, the LTI 1.3
identities and roster records).  Groups and their members belong to the
groups part: a group membership is written through L{emaild.groups.store}
and read through L{emaild.groups.relations}.

The records are in L{emaild.people.records}, the functions that run inside
a caller's transaction in L{emaild.people.store_txn}, what LTI launches and
roster syncs write in L{emaild.people.launches}; their names are importable
from here too.
"""

from __future__ import annotations

import builtins
from typing import Iterable, Sequence

from emaild.groups.relations import CURRENT_GROUP_MEMBERS, GROUPS
from emaild.groups.store import ensure_group_txn, join_group_txn
from emaild.people.launches import (
    RosterMember,
    end_roster,
    join_launch_context_txn,
    leave_roster_txn,
    upsert_from_lti11,
    upsert_roster,
)
from emaild.people.records import (
    COURSE_COLUMNS,
    PERSON_COLUMNS,
    Course,
    CourseMember,
    CourseOfPerson,
    GroupOfPerson,
    LtiOutcome,
    Membership,
    Person,
    PersonDetails,
    PersonError,
)
from emaild.people.roles import is_staff as any_staff_role
from emaild.people.store_txn import (
    course_by_key_txn,
    ensure_course_txn,
    join_course_txn,
    set_email_txn,
    upsert_person_txn,
)

__all__ = [
    "Course", "CourseMember", "CourseOfPerson", "GroupOfPerson", "LtiOutcome", "Membership",
    "PeopleStore", "Person", "PersonDetails", "PersonError", "RosterMember",
    "course_by_key_txn", "end_roster", "ensure_course_txn", "join_course_txn",
    "join_launch_context_txn", "leave_roster_txn", "set_email_txn", "upsert_from_lti11",
    "upsert_person_txn", "upsert_roster",
]


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
            f" RETURNING {PERSON_COLUMNS}",
            (email, display_name or ""),
        )
        return Person(*rows[0])

    async def get(self, person_id: int) -> Person | None:
        rows = await self.db.runQuery(f"SELECT {PERSON_COLUMNS} FROM people WHERE id = %s", (person_id,))
        return Person(*rows[0]) if rows else None

    async def get_many(self, person_ids: Iterable[int]) -> dict[int, Person]:
        ids = sorted(set(person_ids))
        if not ids:
            return {}
        rows = await self.db.runQuery(
            f"SELECT {PERSON_COLUMNS} FROM people WHERE id = ANY(%s)", (ids,))
        return {row[0]: Person(*row) for row in rows}

    async def by_email(self, email: str) -> Person | None:
        rows = await self.db.runQuery(
            f"SELECT {PERSON_COLUMNS} FROM people WHERE lower(email) = lower(%s)", (email,))
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
                f"SELECT {PERSON_COLUMNS} FROM people ORDER BY id LIMIT %s OFFSET %s", (limit, offset))
        else:
            rows = await self.db.runQuery(
                f"SELECT {PERSON_COLUMNS} FROM people p WHERE EXISTS ("
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
            f" FROM {CURRENT_GROUP_MEMBERS} m JOIN {GROUPS} g ON g.id = m.group_id"
            " JOIN courses c ON c.id = g.course_id"
            " WHERE m.person_id = %s ORDER BY g.id", (person_id,))
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
        The person, course membership and group membership of a verified
        LTI 1.1 launch, in one transaction (L{upsert_from_lti11}).
        """
        return await upsert_from_lti11(
            self.db, consumer_key=consumer_key, user_id=user_id, email=email,
            display_name=display_name, roles=roles, context_id=context_id,
            context_title=context_title, group=group)

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
            f"SELECT {COURSE_COLUMNS} FROM courses WHERE context_id = %s"
            " ORDER BY consumer_key <> '', consumer_key, id", (key,))
        return [Course(*row) for row in rows]

    async def courses(self, course_ids: Iterable[int]) -> dict[int, Course]:
        ids = sorted(set(course_ids))
        if not ids:
            return {}
        rows = await self.db.runQuery(f"SELECT {COURSE_COLUMNS} FROM courses WHERE id = ANY(%s)", (ids,))
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
            people = await self.db.runQuery(f"SELECT {PERSON_COLUMNS} FROM people ORDER BY id")
        else:
            people = await self.db.runQuery(
                f"SELECT {PERSON_COLUMNS} FROM people p WHERE EXISTS ("
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
                    f" FROM {CURRENT_GROUP_MEMBERS} m JOIN {GROUPS} g ON g.id = m.group_id"
                    " JOIN courses c ON c.id = g.course_id"
                    " WHERE m.person_id = ANY(%s)"
                    " ORDER BY m.person_id, g.id", (ids,)):
                groups.setdefault(person_id, []).append((context_id, name))
        return [PersonDetails(Person(*row), tuple(identities.get(row[0], ())),
                              tuple(memberships.get(row[0], ())), tuple(groups.get(row[0], ())))
                for row in people]
