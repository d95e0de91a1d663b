"""
C{emaild digest}: the weekly update by hand.

    emaild digest --course KEY --note TEXT [--week 2026-W48]
    emaild digest --preview PERSON [--course KEY] [--week 2026-W48]
    emaild digest --send-now [--course KEY]

C{--note} sets the course team's text for a week's update (default: the
next one to go out; an empty TEXT removes it).  C{--preview} prints the
text part one learner would get (PERSON: id or address), queueing nothing.
C{--send-now} runs this ISO week's update at once, for every course or one;
learners who already had it this week (the daemon ran it, or an earlier
C{--send-now}) are skipped, so it is safe to repeat.
"""

from __future__ import annotations

import sys

from emaild.cli.lookup import find_course, find_person
from emaild.cli.output import CliError
from emaild.cli.runtime import open_database
from emaild.digest import weeks


def add_parser(commands, common) -> None:
    digest = commands.add_parser(
        "digest", parents=[common], help="the weekly update: note, preview, send now",
        usage="emaild digest [-h] (--note TEXT --course KEY | --preview PERSON | --send-now)\n"
              "       [--course KEY] [--week YYYY-Www]",
        description="Set the course team's note for a weekly update, preview one "
                    "learner's update, or send this week's now.")
    mode = digest.add_mutually_exclusive_group(required=True)
    mode.add_argument("--note", metavar="TEXT",
                      help="the course team's text for the week's update ('' removes it)")
    mode.add_argument("--preview", metavar="PERSON",
                      help="print the text part PERSON (id or address) would get; sends nothing")
    mode.add_argument("--send-now", action="store_true",
                      help="run this week's update now (people who had it are skipped)")
    digest.add_argument("--course", metavar="KEY", help="the course (its key or id)")
    digest.add_argument("--week", metavar="YYYY-Www",
                        help="ISO week, e.g. 2026-W48 (default: the next update to go out)")
    digest.set_defaults(func=run)


def _course_name(course) -> str:
    return f"{course.context_id} ({course.title})" if course.title else course.context_id


async def run(parts, args) -> int:
    from emaild.outbound.compose import ComposeError

    reactor = parts.reactor
    if args.week is not None:
        try:
            weeks.parse_week(args.week)
        except weeks.WeekError as e:
            raise CliError(f"argument --week: {e}", 2) from None
    if args.note is not None and args.course is None:
        raise CliError("--note needs --course KEY", 2)
    if args.send_now and args.week is not None:
        raise CliError("--send-now runs this week's update; --week is not allowed with it", 2)
    parts.get_outbox()  # a configuration error, before the database starts
    await open_database(parts)
    people = parts.get_people_store()
    runner = parts.get_digest_runner()
    course = await find_course(people, args.course) if args.course is not None else None
    upcoming = weeks.next_week_to_send(reactor.seconds(), runner.weekday, runner.hour)

    if args.note is not None:
        week = args.week or upcoming
        await parts.get_digest_store().set_note(course.id, week, args.note)
        done = "removed the note" if not args.note.strip() else "set the note"
        print(f"{done} for the {week} update of course {_course_name(course)}")
        return 0

    if args.preview is not None:
        person = await find_person(people, args.preview)
        if course is None:
            courses = await people.courses_of(person.id)
            if len(courses) != 1:
                raise CliError(f"person {person.id} is in {len(courses)} courses; say which "
                               "with --course KEY")
            course_id = courses[0].course_id
            course = (await people.courses([course_id]))[course_id]
        try:
            subject, text, _ = await runner.preview(person.id, course.id, args.week or upcoming)
        except (ComposeError, LookupError) as e:
            raise CliError(str(e).strip("'\"")) from None
        sys.stdout.write(f"Subject: {subject}\n\n{text}")
        return 0

    week = runner.current_week()
    results = await runner.run_week(week, [course.id] if course else None,
                                    should_stop=lambda: args.interruption.requested)
    args.interruption.check()
    if course is not None and course.id not in results:
        print(f"the {week} update of course {_course_name(course)} was already sent")
        return 0
    if not results:
        print(f"the {week} update was already sent in every course")
        return 0
    found = await people.courses(results)
    for course_id, counts in results.items():
        parts = [f"queued {counts.get('queued', 0)}",
                 f"nothing to report {counts.get('nothing', 0)}"]
        if counts.get("no-address"):
            parts.append(f"no address {counts['no-address']}")
        if counts.get("rejected"):
            parts.append(f"rejected {counts['rejected']}")
        print(f"{week} update of course {_course_name(found[course_id])}: {', '.join(parts)}")
    return 1 if any(c.get("rejected") for c in results.values()) else 0
