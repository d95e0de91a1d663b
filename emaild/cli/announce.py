"""
C{emaild announce}: send an announcement and watch it go.

    emaild announce --template NAME (--course KEY | --group GROUP
                    | --people FILE.csv | --to EMAIL ...)
                    [--context JSON] [--subject TEXT] [--no-wait]
    emaild announce --status LABEL [--json]
    emaild announce --resend-failed LABEL [--no-wait]

Every recipient is a person (their own name and sign-in links go in the
mail).  C{--people}: a CSV with an C{email} column; its other columns are
that person's own template values.  C{--context}: values every recipient
shares.  The announcement's batch label is printed first, then a progress
bar (queued, sent, failed, suppressed) until nothing is pending, unless
C{--no-wait}; Ctrl-C stops watching, not sending.

C{--resend-failed LABEL} queues the announcement again for exactly the
people whose message failed, as a new announcement C{LABEL-resend<N>}; the
failed messages stay failed and visible.
"""

from __future__ import annotations

import json
import sys

from emaild.cli.arguments import json_object, positive
from emaild.cli.csv_input import open_csv
from emaild.cli.lookup import find_course, find_group
from emaild.cli.output import CliError, one_line, table
from emaild.cli.runtime import open_database, watch


def add_parser(commands, common) -> None:
    announce = commands.add_parser(
        "announce", parents=[common], help="send an announcement, watch it, re-send failures",
        usage="emaild announce [-h] --template NAME (--course KEY | --group GROUP "
              "| --people FILE.csv | --to EMAIL ...)\n"
              "       [--context JSON] [--subject TEXT] [--no-wait]\n"
              "       emaild announce (--status LABEL [--json] | --resend-failed LABEL)",
        description="Queue a template for every person in a course, a group or a list, "
                    "then show its progress.")
    announce.add_argument("--template", metavar="NAME", help="template, e.g. announcement")
    who = announce.add_mutually_exclusive_group()
    who.add_argument("--course", metavar="KEY", help="every member of the course (key or id)")
    who.add_argument("--group", metavar="GROUP", help="every current member (id or COURSE_KEY/NAME)")
    who.add_argument("--people", metavar="FILE.csv",
                     help="CSV with an 'email' column; other columns are each person's values")
    who.add_argument("--to", action="append", metavar="EMAIL", help="a person's address (repeatable)")
    who.add_argument("--status", metavar="LABEL", help="show an announcement's delivery")
    who.add_argument("--resend-failed", metavar="LABEL",
                     help="queue it again for the people whose message failed")
    announce.add_argument("--context", type=json_object, metavar="JSON",
                          help="JSON object: template values every recipient shares")
    announce.add_argument("--subject", metavar="TEXT", help="the subject (template value 'subject')")
    announce.add_argument("--no-wait", action="store_true", help="do not show the progress bar")
    announce.add_argument("--json", action="store_true", help="with --status: print JSON")
    announce.add_argument("--interval", type=positive(float), default=1.0, metavar="SECONDS",
                          help="seconds between progress updates (default 1)")
    announce.set_defaults(func=run)


def _print_rejected(rejected, names) -> None:
    for r in rejected:
        who = names.get(r.index) or r.recipient or (f"person {r.person_id}" if r.person_id else "")
        print(f"emaild: not queued: {who}: {one_line(r.reason)}", file=sys.stderr)


async def _people_from_csv(parts, path: str):
    """
    [(person id, own values)] for the rows whose address is a known person,
    and the rejected rows as (line, address, reason).
    """
    f, reader = open_csv(path)
    rows = []
    with f:
        try:
            for row in reader:
                rows.append((reader.line_num, row.pop("email").strip(),
                             {k: v for k, v in row.items() if k is not None}))
        except (UnicodeDecodeError, Exception) as e:  # csv.Error, bad bytes
            raise CliError(f"{path}: cannot read past line {reader.line_num}: {one_line(e)}") \
                from None
    if not rows:
        raise CliError(f"{path} has no recipient rows")
    ids = await _ids_by_email(parts, [address for _, address, _ in rows])
    found, rejected = [], []
    for line, address, values in rows:
        if address.lower() in ids:
            found.append((ids[address.lower()], values, f"line {line}: {address}"))
        else:
            rejected.append(f"line {line}: {address or '(empty)'}: no person with this address "
                            "(add them with emaild person add or import)")
    return found, rejected


async def _ids_by_email(parts, addresses) -> dict[str, int]:
    return await parts.get_people_store().ids_by_email(addresses)


async def _watch_label(parts, args, label: str) -> None:
    from emaild.outbound.stats import queue_summary

    store = parts.get_outbox_store()

    async def summary():
        return queue_summary(await store.batch_counts(label))

    print("(Ctrl-C stops watching; the mail stays queued)", file=sys.stderr)
    await watch(parts.reactor, summary, args.interval, args.interruption)


async def run(parts, args) -> int:
    from emaild.digest.announce import AnnounceError

    sending = any(v is not None for v in (args.course, args.group, args.people, args.to))
    if sending and not args.template:
        raise CliError("argument --template is required to send an announcement", 2)
    if not sending and args.status is None and args.resend_failed is None:
        raise CliError("say whom to send it to (--course, --group, --people or --to), "
                       "or use --status / --resend-failed", 2)
    if not sending and (args.template or args.context or args.subject):
        raise CliError("--template, --context and --subject are for sending a new announcement",
                       2)
    outbox = parts.get_outbox()
    if args.template:
        try:
            outbox.composer.templates(args.template)
        except Exception as e:
            raise CliError(str(e)) from None
    await open_database(parts)

    if args.status is not None:
        try:
            report = await parts.get_announcements().status(args.status)
        except AnnounceError as e:
            raise CliError(str(e)) from None
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_status(report)
        return 0

    people = parts.get_people_store()
    rejected_lines: list[str] = []
    names: dict[int, str] = {}
    try:
        if args.resend_failed is not None:
            result = await parts.get_announcements().resend_failed(args.resend_failed)
        else:
            kwargs = {}
            if args.course is not None:
                kwargs["course_id"] = (await find_course(people, args.course)).id
            elif args.group is not None:
                kwargs["group_id"] = (await find_group(parts.get_group_store(), people,
                                                        args.group)).id
            elif args.people is not None:
                found, rejected_lines = await _people_from_csv(parts, args.people)
                kwargs["recipients"] = [(pid, values) for pid, values, _ in found]
                names = {i: where for i, (_, _, where) in enumerate(found)}
            else:
                ids = await _ids_by_email(parts, args.to)
                known = [a for a in args.to if a.strip().lower() in ids]
                rejected_lines = [f"{a}: no person with this address (add them with "
                                  "emaild person add)" for a in args.to if a not in known]
                kwargs["person_ids"] = [ids[a.strip().lower()] for a in known]
                names = dict(enumerate(known))
            if "recipients" in kwargs and not kwargs["recipients"] \
                    or "person_ids" in kwargs and not kwargs["person_ids"]:
                for line in rejected_lines:
                    print(f"emaild: not queued: {line}", file=sys.stderr)
                raise CliError("nobody to send it to: no recipient is a known person")
            result = await parts.get_announcements().send(args.template, context=args.context,
                                                          subject=args.subject, **kwargs)
    except AnnounceError as e:
        raise CliError(str(e)) from None
    print(result.label, flush=True)
    print(f"queued {result.queued} {'message' if result.queued == 1 else 'messages'}, "
          f"rejected {len(result.rejected) + len(rejected_lines)}", file=sys.stderr)
    for line in rejected_lines:
        print(f"emaild: not queued: {line}", file=sys.stderr)
    _print_rejected(result.rejected, names)
    if result.queued and not args.no_wait:
        await _watch_label(parts, args, result.label)
    return 1 if (result.rejected or rejected_lines) else 0


def _print_status(report: dict) -> None:
    counts = report["counts"]
    print(f"announcement {report['label']}: template {report['template']}, "
          f"to {report['audience']}, queued {report['created_at']}")
    if report["resend_of"]:
        print(f"a re-send of the failed recipients of {report['resend_of']}")
    print(", ".join(f"{k} {counts[k]}" for k in
                    ("queued", "sending", "sent", "failed", "suppressed", "total", "rejected")))
    if report["resends"]:
        print("re-sends: " + ", ".join(report["resends"]))
    if report["failures"]:
        print(table(["id", "recipient", "attempts", "last reply / reason"],
                    [[f["outbox_id"], f["recipient"], f["attempts"],
                      one_line(f["last_reply"] or f["reason"] or "-")]
                     for f in report["failures"]], right=[True, False, True, False]))
        if counts["failed"]:
            print(f"emaild announce --resend-failed {report['label']} queues them again")
