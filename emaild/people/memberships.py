"""
Groups made and joined by hand (C{emaild group add|import|join}): people
and courses through the people store's functions, groups and their members
through the groups store's (L{emaild.groups.store}), all in one transaction,
with the same rules as L{PeopleStore} (a course key is found, or a course
made by hand, as in L{PeopleStore.import_people}).
"""

from __future__ import annotations

from typing import Sequence

import attrs

from emaild.groups.store import ensure_group_txn, rejoin_group_txn
from emaild.people.records import Course, Person, PersonError
from emaild.people.store_txn import course_by_key_txn, join_course_txn, upsert_person_txn


@attrs.frozen
class MembershipImport:
    """
    What L{Memberships.import_rows} did with one row.
    """

    person: Person
    new_person: bool
    course: Course
    group_id: int
    new_group: bool
    #: they were not a current member before
    joined: bool


class Memberships:
    def __init__(self, db):
        self.db = db

    async def add_group(self, course_key: str, name: str) -> tuple[Course, int, bool]:
        """
        The group called C{name} in the course C{course_key} names, created
        if needed.

        @return: the course, the group id and whether the group is new.
        @raise PersonError: the course key is ambiguous.
        """

        async def add(cursor):
            course = await course_by_key_txn(cursor, course_key)
            if isinstance(course, PersonError):
                raise course
            group_id, created = await ensure_group_txn(cursor, course.id, name, report=True)
            return course, group_id, created

        return await self.db.transaction(add)

    async def join(self, group_id: int, course_id: int, person_id: int) -> bool:
        """
        Make the person a current member of the group and of its course;
        False if they already were one of the group.
        """

        async def join(cursor):
            await join_course_txn(cursor, course_id, person_id, [])
            return await rejoin_group_txn(cursor, group_id, person_id)

        return await self.db.transaction(join)

    async def import_rows(self, rows: Sequence[tuple[str, str, str, str]]
                          ) -> list[MembershipImport | PersonError]:
        """
        For each (checked address, name, course key, group name), in one
        transaction: add or update the person (an empty name keeps theirs),
        make them a member of the course and of its group of that name (made
        if needed; a member who had left joins again, with a new reply
        address).  Returns, per row, what was done or the L{PersonError}
        that kept the row out.
        """

        async def add_all(cursor):
            courses: dict[str, Course | PersonError] = {}
            groups: dict[tuple[int, str], int] = {}
            results: list[MembershipImport | PersonError] = []
            for email, display_name, key, group in rows:
                if key not in courses:
                    courses[key] = await course_by_key_txn(cursor, key)
                course = courses[key]
                if isinstance(course, PersonError):
                    results.append(course)
                    continue
                person, created = await upsert_person_txn(cursor, email, display_name)
                await join_course_txn(cursor, course.id, person.id, [])
                new_group = False
                if (course.id, group) not in groups:
                    groups[course.id, group], new_group = await ensure_group_txn(
                        cursor, course.id, group, report=True)
                group_id = groups[course.id, group]
                joined = await rejoin_group_txn(cursor, group_id, person.id)
                results.append(MembershipImport(person, created, course, group_id, new_group,
                                                joined))
            return results

        return await self.db.transaction(add_all)
