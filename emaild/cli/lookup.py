"""
Finding a course, a person or a group by what the user typed on the
command line (a key, an id, an address, C{COURSE_KEY/NAME}).
"""

from __future__ import annotations

from emaild.cli.output import CliError


def clean_name(text: str | None) -> str:
    """
    A name as typed, with whitespace runs made one space.
    """
    return " ".join((text or "").split())


async def find_course(people, key: str):
    """
    The course KEY names: its key (context_id; the course made by hand
    first, else the only LTI course with it), or its id.

    @param people: the L{emaild.people.store.PeopleStore}.
    @raise CliError: none, or several.
    """
    key = key.strip()
    found = await people.find_courses(key)
    if not found and key.isdigit():
        found = list((await people.courses([int(key)])).values())
    if not found:
        raise CliError(f"no course {key!r}")
    if found[0].consumer_key != "" and len(found) > 1:
        which = ", ".join(f"{c.id} (consumer {c.consumer_key!r})" for c in found)
        raise CliError(f"course {key!r} is ambiguous: it could be {which}; use the id")
    return found[0]


async def find_person(people, ref: str):
    """
    The person REF names: an id or an address.

    @raise CliError: nobody.
    """
    ref = ref.strip()
    person = (await people.get(int(ref)) if ref.isdigit() else await people.by_email(ref))
    if person is None:
        raise CliError(f"no person {ref!r}")
    return person


async def find_group(groups, people, ref: str):
    """
    The group GROUP names: an id, or C{COURSE_KEY/NAME} (a course key may
    itself contain C{/}: every split is tried).

    @param groups: the L{emaild.groups.store.GroupStore}.
    @param people: the L{emaild.people.store.PeopleStore}.
    @raise CliError: no such group, or several.
    """
    ref = ref.strip()
    if ref.isdigit():
        group = await groups.get(int(ref))
        if group is None:
            raise CliError(f"no group {ref}")
        return group
    if "/" not in ref:
        raise CliError(f"GROUP must be a group id or COURSE_KEY/NAME, got {ref!r}", 2)
    found = []
    parts = ref.split("/")
    for i in range(1, len(parts)):
        key, name = "/".join(parts[:i]).strip(), clean_name("/".join(parts[i:]))
        for course in await people.find_courses(key):
            group = await groups.find(course.id, name)
            if group is not None:
                found.append((group, course))
    if not found:
        raise CliError(f"no group {ref!r}")
    if len(found) > 1:
        which = ", ".join(f"{g.id} (consumer {c.consumer_key!r}, course {c.context_id!r})"
                          for g, c in found)
        raise CliError(f"group {ref!r} is ambiguous: it could be {which}; use the id")
    return found[0][0]
