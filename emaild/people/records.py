"""
The people part's records: what its store and its LTI launch functions
return.
"""

from __future__ import annotations

import builtins

import attrs


@attrs.frozen
class Person:
    id: int
    #: current address, or None when we were never given one
    email: str | None
    display_name: str


#: the columns of C{people} a L{Person} is made of, in order
PERSON_COLUMNS = "id, email, display_name"


@attrs.frozen
class Course:
    id: int
    #: the LTI consumer's key; '' for a course made by hand
    consumer_key: str
    #: the LMS's context_id; for a course made by hand, the key it was given
    context_id: str
    title: str


#: the columns of C{courses} a L{Course} is made of, in order
COURSE_COLUMNS = "id, consumer_key, context_id, title"


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
