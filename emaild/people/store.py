"""
The people part's tables: C{people}, C{lti_identities}, C{courses},
C{course_members}, C{groups}, C{group_members}.
"""

from __future__ import annotations

from typing import Iterable

import attrs


@attrs.frozen
class Person:
    id: int
    #: current address, or None when we were never given one
    email: str | None
    display_name: str


_PERSON = "id, email, display_name"


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

    async def list(self, limit: int = 100, offset: int = 0) -> list[Person]:
        rows = await self.db.runQuery(
            f"SELECT {_PERSON} FROM people ORDER BY id LIMIT %s OFFSET %s", (limit, offset))
        return [Person(*row) for row in rows]

    async def courses_of(self, person_id: int) -> list[tuple[int, str, list[str]]]:
        """
        (course id, title, roles) of every course the person belongs to.
        """
        rows = await self.db.runQuery(
            "SELECT c.id, coalesce(nullif(c.title, ''), c.context_id), m.roles"
            " FROM course_members m JOIN courses c ON c.id = m.course_id"
            " WHERE m.person_id = %s ORDER BY c.id", (person_id,))
        return [(r[0], r[1], list(r[2])) for r in rows]

    async def groups_of(self, person_id: int) -> list[tuple[int, str, str]]:
        """
        (group id, group name, course title) of every group the person is a
        current member of.
        """
        rows = await self.db.runQuery(
            "SELECT g.id, g.name, coalesce(nullif(c.title, ''), c.context_id)"
            " FROM group_members m JOIN groups g ON g.id = m.group_id"
            " JOIN courses c ON c.id = g.course_id"
            " WHERE m.person_id = %s AND m.left_at IS NULL ORDER BY g.id", (person_id,))
        return [tuple(r) for r in rows]
