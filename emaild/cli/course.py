"""
C{emaild course sync COURSE}: fetch a course's roster from its LTI 1.3
platform (Names and Role Provisioning Services) now, as a launch does at
most once per C{[lti13] nrps_interval}.
"""

from __future__ import annotations

from emaild.cli.lookup import find_course
from emaild.cli.output import CliError
from emaild.cli.runtime import open_database
from emaild.people.lti13_nrps import NrpsError


def add_parser(commands, common) -> None:
    course = commands.add_parser(
        "course", parents=[common], help="course rosters from LTI 1.3 platforms",
        description="Fetch a course's roster from its platform (Names and Role Provisioning "
                    "Services) now, as a launch does at most once per [lti13] nrps_interval.")
    actions = course.add_subparsers(dest="course_command", metavar="ACTION", required=True)
    sync_parser = actions.add_parser("sync", help="fetch the roster now")
    sync_parser.add_argument("course", metavar="COURSE", help="its key (context_id) or id")
    sync_parser.set_defaults(func=sync)


async def sync(parts, args) -> int:
    await open_database(parts)
    course = await find_course(parts.get_people_store(), args.course)
    try:
        totals = await parts.get_rosters().sync_now(course.id)
    except NrpsError as e:
        raise CliError(f"course {args.course}: {e}") from None
    print(f"course {course.context_id}: {totals['members']} members ({totals['new']} new, "
          f"{totals['updated']} updated, {totals['left']} left) in {totals['pages']} pages")
    return 0
