"""
Kinds of mail, and the scopes a person can turn mail off in.

A kind (C{[kinds.<name>]} in the configuration, see L{emaild.config.MailKind})
says what a message is about: C{login} links, course C{announcement}s, group
C{notification}s, the weekly C{digest}.  Mail of an I{unsubscribable} kind
carries C{List-Unsubscribe} and is suppressed when its person opted out;
mail of the other kinds (transactional: sign-in links, replies to a
request) never is.

An opt-out has a scope: one kind or every kind (C{kind} None), in one course
or in every course (C{course_id} None).  An unsubscribe link's target
encodes the scope of the mail it came in, C{"<kind>:<course id>"}, with
C{*} for "all" (C{"announcement:3"}, C{"digest:*"}, C{"*:3"}).
"""

from __future__ import annotations

import re
from typing import Mapping

import attrs

from emaild.config import MailKind


class KindError(ValueError):
    """
    No such kind, or a scope that does not parse; the message says why.
    """


def get_kind(config, name: str) -> MailKind:
    """
    The configured kind called C{name}, or L{KindError} listing the known ones.
    """
    kinds = config.kinds
    if not isinstance(name, str) or name not in kinds:
        raise KindError(f"no kind of mail {name!r}; configured: {', '.join(sorted(kinds))}")
    return kinds[name]


def unsubscribable_kinds(config) -> list[MailKind]:
    """
    The kinds a person can turn off, by name.
    """
    return [k for _, k in sorted(config.kinds.items()) if k.unsubscribable]


def is_unsubscribable(config, name: str | None) -> bool:
    kind = config.kinds.get(name) if name is not None else None
    return kind is not None and kind.unsubscribable


_TARGET = re.compile(r"^(\*|[a-z0-9][a-z0-9_-]{0,62}):(\*|[1-9][0-9]{0,18})$")


@attrs.frozen
class Scope:
    """
    What an opt-out covers: C{course_id} None is every course, C{kind}
    None every (unsubscribable) kind.
    """

    course_id: int | None
    kind: str | None

    @property
    def target(self) -> str:
        """
        This scope as an unsubscribe link's target.
        """
        return (f"{self.kind if self.kind is not None else '*'}:"
                f"{self.course_id if self.course_id is not None else '*'}")

    @property
    def key(self) -> str:
        """
        A form field value naming this scope (C{"3:digest"}, C{"*:*"}).
        """
        return (f"{self.course_id if self.course_id is not None else '*'}:"
                f"{self.kind if self.kind is not None else '*'}")

    def broaden_to_course(self) -> "Scope":
        """
        "All mail from this course" (or all mail, for mail not about a course).
        """
        return Scope(self.course_id, None)

    def covers(self, course_id: int | None, kind: str | None) -> bool:
        return ((self.course_id is None or self.course_id == course_id)
                and (self.kind is None or self.kind == kind))

    def describe(self, config=None, course_titles: Mapping[int, str] | None = None) -> str:
        """
        Words for a page: "Announcements from the course team in Physics 101".
        """
        if self.kind is None:
            what = "all mail"
        elif config is not None and self.kind in config.kinds:
            what = config.kinds[self.kind].description
        else:
            what = f"{self.kind} mail"
        if self.course_id is None:
            return f"{what} from every course" if self.kind is None else what
        title = (course_titles or {}).get(self.course_id) or f"course {self.course_id}"
        return f"{what} from {title}" if self.kind is None else f"{what} in {title}"


def scope_target(kind: str | None, course_id: int | None) -> str:
    return Scope(course_id, kind).target


def parse_target(target: str) -> Scope:
    """
    The scope an unsubscribe link's target names.

    @raise KindError: not a scope.
    """
    match = _TARGET.fullmatch(target) if isinstance(target, str) else None
    if match is None:
        raise KindError(f"{target!r} is not an unsubscribe scope such as 'announcement:3' or '*:*'")
    kind, course = match.groups()
    return Scope(None if course == "*" else int(course), None if kind == "*" else kind)


def parse_key(key: str) -> Scope | None:
    """
    The scope a preferences form field names, or None for anything else.
    """
    course, _, kind = key.partition(":") if isinstance(key, str) else ("", "", "")
    try:
        return parse_target(f"{kind}:{course}")
    except KindError:
        return None


def optout_reason(person_id: int, scope: Scope, source: str, day: str) -> str:
    """
    Why a message was suppressed: "person 12 unsubscribed from announcement
    mail in course 3 (one-click, 2026-11-28)".  Names only ids and
    configured words, never user data.
    """
    what = "all" if scope.kind is None else scope.kind
    where = "every course" if scope.course_id is None else f"course {scope.course_id}"
    return f"person {person_id} unsubscribed from {what} mail in {where} ({source}, {day})"
