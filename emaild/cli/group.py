"""
C{emaild group}: make groups, list them and their members, import and
change memberships by hand.

    emaild group add --course KEY NAME
    emaild group list [--course KEY] [--json]
    emaild group members GROUP [--all] [--json]
    emaild group import FILE.csv
    emaild group join GROUP EMAIL
    emaild group leave GROUP EMAIL

GROUP is a group's id, or C{COURSE_KEY/NAME}.  A course key is found as for
C{emaild person add --course}: the course made by hand with that key, else
the only LTI course with that C{context_id}; C{group add} and C{group import}
make a course by hand when there is none, and refuse a key several LTI
consumers use.

Every member has a personal reply address for the group
(C{<prefix>-<token>@<relay domain>}, see L{emaild.groups.addresses}); it
works while they are a member.  Leaving kills it for good: joining again
gives a new one.

The import file is UTF-8 CSV with a header line: C{email}, C{group} and
C{course} columns and an optional C{name}.  People are added (or their name
updated) as by C{emaild person import}, groups made as needed, and everyone
made a current member of their row's group and its course, in transactions
of L{IMPORT_CHUNK} rows; rejected rows are listed with their line number and
reason.

Exit codes: 0 success; 1 rejected rows or the work failed; 2 bad arguments.
"""

from __future__ import annotations

import json
import sys

from emaild.cli.csv_input import open_checked_csv, read_in_chunks
from emaild.cli.lookup import clean_name, find_group
from emaild.cli.output import CliError, Interrupted, one_line, rejected_lines, table, when
from emaild.cli.runtime import open_database
from emaild.mailformat.addresses import AddressError, check_address

#: CSV rows per transaction
IMPORT_CHUNK = 500
#: the columns of an import file, and whether each is required
IMPORT_COLUMNS = (("email", True), ("group", True), ("course", True), ("name", False))


def add_parser(commands, common) -> None:
    """
    Add C{group add|list|members|import|join|leave} to the C{emaild}
    command's subparsers.
    """
    group = commands.add_parser(
        "group", parents=[common], help="make groups and manage their members",
        description="Make groups, list them and their members, and change who belongs.")
    sub = group.add_subparsers(dest="group_command", metavar="SUBCOMMAND", required=True)

    add = sub.add_parser("add", parents=[common], help="make a group (prints its id)",
                         description="Make a group in a course (the course is made by hand if "
                                     "there is none); prints the group's id.")
    add.add_argument("--course", required=True, metavar="KEY", help="the course's key")
    add.add_argument("name", metavar="NAME", help="the group's name")
    add.set_defaults(func=_add)

    listing = sub.add_parser("list", parents=[common], help="list groups",
                             description="List groups with their number of current members.")
    listing.add_argument("--course", metavar="KEY", help="only the groups of this course")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_list)

    members = sub.add_parser("members", parents=[common], help="list a group's members",
                             description="List a group's members with their personal reply "
                                         "addresses.")
    members.add_argument("group", metavar="GROUP", help="group id, or COURSE_KEY/NAME")
    members.add_argument("--all", action="store_true",
                         help="include those who left (their reply addresses no longer work)")
    members.add_argument("--json", action="store_true", help="print JSON")
    members.set_defaults(func=_members)

    imports = sub.add_parser("import", parents=[common], help="add memberships from a CSV",
                             description="Add people to groups from a CSV file with columns "
                                         "email, group, course and name (optional).")
    imports.add_argument("file", metavar="FILE.csv")
    imports.set_defaults(func=_import)

    join = sub.add_parser("join", parents=[common], help="add a person to a group",
                          description="Make a person (added before with emaild person add) a "
                                      "member of a group; prints their reply address.")
    join.add_argument("group", metavar="GROUP", help="group id, or COURSE_KEY/NAME")
    join.add_argument("email", metavar="EMAIL", help="the person's address")
    join.set_defaults(func=_join)

    leave = sub.add_parser("leave", parents=[common], help="take a person out of a group",
                           description="End a membership; the person's reply address for the "
                                       "group stops working.")
    leave.add_argument("group", metavar="GROUP", help="group id, or COURSE_KEY/NAME")
    leave.add_argument("email", metavar="EMAIL", help="the person's address")
    leave.set_defaults(func=_leave)


class _Stores:
    """
    The parts the group commands use, from L{CommandParts}.
    """

    def __init__(self, parts):
        self.people = parts.get_people_store()
        self.groups = parts.get_group_store()
        self.memberships = parts.get_memberships()
        self.addresses = parts.get_reply_addresses()


async def _open_db(parts) -> _Stores:
    await open_database(parts)
    return _Stores(parts)


async def _find_group(stores: _Stores, ref: str):
    return await find_group(stores.groups, stores.people, ref)


def _describe(group) -> str:
    return f"group {group.id} ({group.name} in {group.course_title})"


def _who(person) -> str:
    return f"{person.display_name} <{person.email}>" if person.display_name else f"<{person.email}>"


# -- add and list ------------------------------------------------------------------


async def _add(parts, args) -> int:
    from emaild.people.store import PersonError

    key, name = args.course.strip(), clean_name(args.name)
    if not key:
        raise CliError("not added: --course is empty", 2)
    if not name:
        raise CliError("not added: NAME is empty", 2)
    stores = await _open_db(parts)
    try:
        course, group_id, created = await stores.memberships.add_group(key, name)
    except PersonError as e:
        raise CliError(f"not added: {one_line(e)}") from None
    if not created:
        print(f"emaild: course {course.context_id} already has a group {name!r}",
              file=sys.stderr)
    print(group_id)
    return 0


async def _list(parts, args) -> int:
    stores = await _open_db(parts)
    if args.course is not None:
        courses = await stores.people.find_courses(args.course.strip())
        if not courses:
            raise CliError(f"no course {args.course.strip()!r}")
        groups = [entry for c in courses for entry in await stores.groups.list(c.id)]
    else:
        groups = await stores.groups.list()
        courses = list((await stores.people.courses(g.course_id for g, _ in groups)).values())
    by_id = {c.id: c for c in courses}
    if args.json:
        print(json.dumps([{
            "id": g.id, "name": g.name, "course": by_id[g.course_id].context_id,
            "consumer_key": by_id[g.course_id].consumer_key, "course_title": g.course_title,
            "members": count} for g, count in groups], indent=2, ensure_ascii=False))
    else:
        print(table(["id", "course", "members", "name"],
                    [[g.id, by_id[g.course_id].context_id, count, g.name] for g, count in groups],
                    right=[True, False, True, False]))
    return 0


# -- members ------------------------------------------------------------------------


async def _members(parts, args) -> int:
    stores = await _open_db(parts)
    group = await _find_group(stores, args.group)
    members = await stores.groups.members(group.id, include_left=args.all)
    addresses = stores.addresses
    if args.json:
        print(json.dumps([{
            "person_id": m.person_id, "name": m.display_name, "email": m.email,
            "joined_at": m.joined_at.isoformat() if m.joined_at else None,
            "left_at": m.left_at.isoformat() if m.left_at else None,
            "reply_address": addresses.address(m.token), "reply_address_works": m.live,
        } for m in members], indent=2, ensure_ascii=False))
        return 0
    print(f"{_describe(group)}: {sum(m.live for m in members)} current "
          f"{'member' if sum(m.live for m in members) == 1 else 'members'}")
    rows = [[m.display_name or "-", m.email or "-", when(m.joined_at)]
            + ([f"left {when(m.left_at)}"] if args.all and not m.live else
               (["-"] if args.all else []))
            + [addresses.address(m.token) if m.live
               else f"{addresses.address(m.token)} (dead)"] for m in members]
    headers = ["name", "email", "joined (UTC)"] + (["left"] if args.all else []) + ["reply address"]
    if rows:
        print(table(headers, rows))
    return 0


# -- join and leave -----------------------------------------------------------------


async def _person(stores: _Stores, address: str):
    try:
        email = check_address(address)
    except AddressError as e:
        raise CliError(one_line(e)) from None
    person = await stores.people.by_email(email)
    if person is None:
        raise CliError(f"nobody has the address {email}; add them first with emaild person add")
    return person


async def _join(parts, args) -> int:
    stores = await _open_db(parts)
    group = await _find_group(stores, args.group)
    person = await _person(stores, args.email)
    joined = await stores.memberships.join(group.id, group.course_id, person.id)
    member = await stores.groups.member(group.id, person.id)
    verb = "joined" if joined else "is already a member of"
    print(f"{_who(person)} {verb} {_describe(group)}; their reply address: "
          f"{stores.addresses.address(member.token)}")
    return 0


async def _leave(parts, args) -> int:
    stores = await _open_db(parts)
    group = await _find_group(stores, args.group)
    person = await _person(stores, args.email)
    member = await stores.groups.member(group.id, person.id)
    if not await stores.groups.leave(group.id, person.id):
        raise CliError(f"{_who(person)} is not a member of {_describe(group)}")
    print(f"{_who(person)} left {_describe(group)}; their reply address "
          f"{stores.addresses.address(member.token)} no longer works")
    return 0


# -- import -------------------------------------------------------------------------


def import_summary(counts: dict, rejected) -> str:
    done = counts["rows"]
    return "\n".join([
        f"imported {done} {'row' if done == 1 else 'rows'} ({counts['joined']} joined, "
        f"{done - counts['joined']} already members; {counts['people']} new "
        f"{'person' if counts['people'] == 1 else 'people'}, {counts['groups']} new "
        f"{'group' if counts['groups'] == 1 else 'groups'}), rejected {len(rejected)} "
        f"{'row' if len(rejected) == 1 else 'rows'}",
        *rejected_lines(rejected, "imported; fix and import them again")])


async def import_csv(stores: _Stores, reader, path: str, check_interrupt=lambda: None,
                     out=None) -> int:
    """
    Import every row; print the summary with every rejected row and why;
    return 0 when every row was imported, else 1.
    """
    from emaild.people.store import PersonError

    out = out or sys.stdout
    counts = dict.fromkeys(("rows", "joined", "people", "groups"), 0)
    rejected: list[tuple[int, str, str]] = []

    async def flush(chunk, lines):
        results = await stores.memberships.import_rows(chunk)
        for (line, address), result in zip(lines, results, strict=True):
            if isinstance(result, PersonError):
                rejected.append((line, address, str(result)))
                continue
            counts["rows"] += 1
            counts["joined"] += result.joined
            counts["people"] += result.new_person
            counts["groups"] += result.new_group

    def parse(row) -> tuple[str, str, str, str]:
        try:
            email = check_address(row.get("email") or "")
        except AddressError as e:
            raise ValueError(str(e)) from None
        course, group = (row.get("course") or "").strip(), clean_name(row.get("group"))
        if not course:
            raise ValueError("the course is empty")
        if not group:
            raise ValueError("the group is empty")
        return email, clean_name(row.get("name")), course, group

    try:
        error = await read_in_chunks(reader, path, parse, flush, chunk_size=IMPORT_CHUNK,
                                     rejected=rejected, check_interrupt=check_interrupt)
    except Interrupted:
        rejected.sort()
        print(import_summary(counts, rejected), file=out, flush=True)
        print("emaild: interrupted; later rows were not imported", file=sys.stderr)
        raise
    if counts["rows"] == 0 and not rejected and error is None:
        raise CliError(f"{path} has no rows")
    rejected.sort()
    print(import_summary(counts, rejected), file=out)
    if error:
        print(f"emaild: {error}", file=sys.stderr)
    return 1 if (rejected or error) else 0


async def _import(parts, args) -> int:
    f, reader = open_checked_csv(args.file, IMPORT_COLUMNS)
    with f:
        stores = await _open_db(parts)
        return await import_csv(stores, reader, args.file, args.interruption.check)
