"""
C{emaild person}: add, list and import people by hand.

    emaild person add EMAIL [--name NAME] [--course KEY]
    emaild person list [--course KEY] [--json]
    emaild person import FILE.csv

A person is known by their address (case-insensitively): adding an address
that exists updates that person's name (an empty name keeps the stored one)
and course membership instead of making a second person, so the same CSV can
be imported again safely.  People who arrive by LTI launch are the same
people: a launch whose address matches joins the person made here.

A course key names the course whose C{context_id} it is: the one made by
hand if there is one, else the only LTI course with that id (so a course's
LMS id, e.g. C{course-v1:MITx+6.00x+2026}, works); when there is none, a
course is made by hand (consumer key '', C{context_id} = the key).  A key
that several LTI consumers use for different courses is refused as
ambiguous.

The import file is UTF-8 CSV (a BOM is fine) with a header line: an
C{email} column, optional C{name} and C{course} columns, nothing else (a
misspelt column is an error rather than silently ignored data).  Each row
is checked like a C{send --recipients} row; rejected rows are listed with
their line number and reason, the others are imported in transactions of
L{IMPORT_CHUNK} rows.

Exit codes: 0 success; 1 rejected rows or the work failed; 2 bad arguments.
"""

from __future__ import annotations

import json
import sys

from emaild.cli.csv_input import open_checked_csv, read_in_chunks
from emaild.cli.lookup import clean_name
from emaild.cli.output import CliError, Interrupted, one_line, rejected_lines, table
from emaild.cli.runtime import open_database
from emaild.mailformat.addresses import AddressError, check_address
from emaild.people.lti13_store import lti13_identities_of

#: CSV rows per transaction
IMPORT_CHUNK = 500
#: the columns an import file may have, and whether it must
IMPORT_COLUMNS = (("email", True), ("name", False), ("course", False))


def add_parser(commands, common) -> None:
    """
    Add C{person add|list|import} to the C{emaild} command's subparsers.
    """
    person = commands.add_parser(
        "person", parents=[common], help="add, list and import people",
        description="Add, list and import the people who get course mail.")
    sub = person.add_subparsers(dest="person_command", metavar="SUBCOMMAND", required=True)

    add = sub.add_parser("add", parents=[common], help="add a person (or update their name)",
                         description="Add a person by address, or update the one who has it.")
    add.add_argument("email", metavar="EMAIL", help="their address")
    add.add_argument("--name", default="", metavar="NAME", help="display name")
    add.add_argument("--course", metavar="KEY",
                     help="make them a member of this course (created if there is none)")
    add.set_defaults(func=_add)

    listing = sub.add_parser("list", parents=[common], help="list people",
                             description="List people with their courses, groups and LTI "
                                         "identities.")
    listing.add_argument("--course", metavar="KEY", help="only the members of this course")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=_list)

    imports = sub.add_parser("import", parents=[common], help="add or update people from a CSV",
                             description="Add or update people from a CSV file with columns "
                                         "email, name (optional) and course (optional).")
    imports.add_argument("file", metavar="FILE.csv")
    imports.set_defaults(func=_import)


def _describe(person, course) -> str:
    who = f"{person.display_name} <{person.email}>" if person.display_name else f"<{person.email}>"
    where = f" in course {course.context_id}" if course is not None else ""
    return f"person {person.id}: {who}{where}"


async def _open_db(parts):
    await open_database(parts)
    return parts.get_people_store()


# -- add -------------------------------------------------------------------------


async def _add(parts, args) -> int:
    from emaild.people.store import PersonError

    try:
        email = check_address(args.email)
    except AddressError as e:
        raise CliError(f"not added: {one_line(e)}") from None
    course = args.course.strip() if args.course is not None else None
    if course == "":
        raise CliError("not added: --course is empty", 2)
    store = await _open_db(parts)
    try:
        person, created, course = await store.add_person(email, clean_name(args.name), course)
    except PersonError as e:
        raise CliError(f"not added: {one_line(e)}") from None
    print(f"{'added' if created else 'updated'} {_describe(person, course)}")
    return 0


# -- list ------------------------------------------------------------------------


def _role(role: str) -> str:
    """
    C{urn:lti:role:ims/lis/Instructor} -> C{Instructor}.
    """
    return role.rsplit("/", 1)[-1].rsplit(":", 1)[-1] or role


def platform_names(config) -> dict[str, str]:
    """
    issuer -> the names of the C{[lti13.platforms.<name>]} with that issuer.
    """
    names: dict[str, list[str]] = {}
    for name, platform in sorted(config.lti13_platforms.items()):
        names.setdefault(platform.issuer, []).append(name)
    return {issuer: "/".join(found) for issuer, found in names.items()}


def people_json(entries, suppressed=None, lti13=None, platforms=None) -> list[dict]:
    """
    @param suppressed: {lower-cased address: (reason, since)} of the
        suppressed addresses among them.
    @param lti13: {person id: [(issuer, sub)]}: their LTI 1.3 identities,
        listed after the LTI 1.1 ones, with the platform's name (from
        L{platform_names}) or null when no platform has that issuer now.
    """
    suppressed = suppressed or {}
    lti13 = lti13 or {}
    platforms = platforms or {}

    def suppression(email):
        found = suppressed.get((email or "").lower())
        return None if found is None else {
            "reason": found[0], "since": found[1].isoformat() if found[1] else None}

    return [{
        "id": e.person.id,
        "email": e.person.email,
        "name": e.person.display_name,
        "identities": [{"consumer_key": k, "user_id": u} for k, u in e.identities]
        + [{"issuer": i, "sub": sub, "platform": platforms.get(i)}
           for i, sub in lti13.get(e.person.id, ())],
        "courses": [{"consumer_key": m.course.consumer_key, "context_id": m.course.context_id,
                     "title": m.course.title, "roles": list(m.roles)} for m in e.courses],
        "groups": [{"course": c, "name": n} for c, n in e.groups],
        "suppressed": suppression(e.person.email),
    } for e in entries]


def people_table(entries, suppressed=None, lti13=None, platforms=None) -> str:
    """
    A suppressed address (nothing is sent to it) is marked in the email
    column, and a note under the table says how many there are.  The lti
    column names the LTI 1.1 consumer keys, then C{lti13:<platform>} for
    each LTI 1.3 identity (L{people_json} says what C{lti13} and
    C{platforms} are).
    """
    suppressed = suppressed or {}
    lti13 = lti13 or {}
    platforms = platforms or {}
    rows = []
    for e in entries:
        email = e.person.email or "-"
        if (e.person.email or "").lower() in suppressed:
            email += " (suppressed)"
        courses = ", ".join(
            m.course.context_id + (f" ({', '.join(_role(r) for r in m.roles)})" if m.roles else "")
            for m in e.courses)
        rows.append([e.person.id, email, e.person.display_name or "-",
                     ", ".join(dict.fromkeys(
                         [k for k, _ in e.identities]
                         + [f"lti13:{platforms.get(i, i)}" for i, _ in lti13.get(e.person.id, ())]))
                     or "-",
                     ", ".join(n for _, n in e.groups) or "-", courses or "-"])
    text = table(["id", "email", "name", "lti", "groups", "courses"], rows,
                 right=[True, False, False, False, False, False])
    marked = sum(1 for e in entries if (e.person.email or "").lower() in suppressed)
    if marked:
        text += (f"\n{marked} suppressed {'address' if marked == 1 else 'addresses'}: nothing is "
                 "sent to them (emaild queue --suppressed says why)")
    return text


async def _list(parts, args) -> int:
    store = await _open_db(parts)
    course = args.course.strip() if args.course is not None else None
    if course is not None and not await store.find_courses(course):
        raise CliError(f"no course {course!r}")
    entries = await store.directory(course)
    suppressed = {s.address: (s.reason, s.created_at)
                  for s in await parts.get_outbox_store().suppressions(e.person.email
                                                                       for e in entries)}
    lti13 = await lti13_identities_of(parts.db, (e.person.id for e in entries))
    platforms = platform_names(parts.get_config())
    print(json.dumps(people_json(entries, suppressed, lti13, platforms), indent=2,
                     ensure_ascii=False) if args.json
          else people_table(entries, suppressed, lti13, platforms))
    return 0


# -- import ----------------------------------------------------------------------


def open_people_csv(path: str):
    """
    Open C{path} and check its header; return the file and its reader, whose
    columns are now called C{email}, C{name}, C{course}.

    @raise CliError: unreadable, empty, no C{email} column, or unknown or
        repeated columns.
    """
    return open_checked_csv(path, IMPORT_COLUMNS)


def import_summary(new: int, updated: int, rejected) -> str:
    done = new + updated
    return "\n".join([f"imported {done} {'person' if done == 1 else 'people'} ({new} new, "
                      f"{updated} updated), rejected {len(rejected)} "
                      f"{'row' if len(rejected) == 1 else 'rows'}",
                      *rejected_lines(rejected, "imported; fix and import them again")])


async def import_csv(store, reader, path: str, check_interrupt=lambda: None, out=None) -> int:
    """
    Import every row; print the summary with every rejected row and why;
    return 0 when every row was imported, else 1.
    """
    from emaild.people.store import PersonError

    out = out or sys.stdout
    new = updated = 0
    rejected: list[tuple[int, str, str]] = []

    async def flush(chunk, lines):
        nonlocal new, updated
        results = await store.import_people(chunk)
        for (line, address), result in zip(lines, results, strict=True):
            if isinstance(result, PersonError):
                rejected.append((line, address, str(result)))
            elif result[1]:
                new += 1
            else:
                updated += 1

    def parse(row) -> tuple[str, str, str | None]:
        try:
            email = check_address(row.get("email") or "")
        except AddressError as e:
            raise ValueError(str(e)) from None
        return email, clean_name(row.get("name")), (row.get("course") or "").strip() or None

    try:
        error = await read_in_chunks(reader, path, parse, flush, chunk_size=IMPORT_CHUNK,
                                     rejected=rejected, check_interrupt=check_interrupt)
    except Interrupted:
        rejected.sort()
        print(import_summary(new, updated, rejected), file=out, flush=True)
        print("emaild: interrupted; later rows were not imported", file=sys.stderr)
        raise
    if new + updated == 0 and not rejected and error is None:
        raise CliError(f"{path} has no rows")
    rejected.sort()
    print(import_summary(new, updated, rejected), file=out)
    if error:
        print(f"emaild: {error}", file=sys.stderr)
    return 1 if (rejected or error) else 0


async def _import(parts, args) -> int:
    f, reader = open_people_csv(args.file)
    with f:
        store = await _open_db(parts)
        return await import_csv(store, reader, args.file, args.interruption.check)
