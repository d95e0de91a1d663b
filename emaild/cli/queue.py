"""
C{emaild queue}: the outbox's counts per state and class, its failures, its
suppressed addresses, or a progress bar until it drains.

    emaild queue [--json] [--failed [--limit N] | --suppressed]
    emaild queue --watch [--interval S]
"""

from __future__ import annotations

import json

from emaild.cli.arguments import positive
from emaild.cli.output import (
    counts_table,
    failures_json,
    failures_table,
    suppressions_json,
    suppressions_table,
)
from emaild.cli.runtime import open_database, watch
from emaild.outbound.stats import queue_report, queue_summary


def add_parser(commands, common) -> None:
    queue = commands.add_parser("queue", parents=[common], help="show the outbox",
                                description="Counts per state and class, failures, or a progress bar.")
    mode = queue.add_mutually_exclusive_group()
    mode.add_argument("--failed", action="store_true", help="list failed messages with their last reply")
    mode.add_argument("--watch", action="store_true", help="show a progress bar until the queue drains")
    mode.add_argument("--suppressed", action="store_true",
                      help="list the suppressed addresses (nothing is sent to them) and why")
    queue.add_argument("--json", action="store_true", help="print JSON (counts, or failures with --failed)")
    queue.add_argument("--limit", type=positive(int), default=50, metavar="N",
                       help="failures to list (default 50)")
    queue.add_argument("--interval", type=positive(float), default=1.0, metavar="SECONDS",
                       help="seconds between --watch updates (default 1)")
    queue.set_defaults(func=run, check_arguments=_check_arguments)


def _check_arguments(args) -> str | None:
    if args.json and args.watch:
        return "argument --json: not allowed with argument --watch"
    return None


async def run(parts, args) -> int:
    await open_database(parts)
    store = parts.get_outbox_store()
    if args.failed:
        rows = await store.failures(args.limit)
        print(json.dumps(failures_json(rows), indent=2) if args.json else failures_table(rows))
    elif args.watch:
        async def summary():
            return queue_summary(await store.counts())

        await watch(parts.reactor, summary, args.interval, args.interruption)
    elif args.suppressed:
        rows = await store.suppressions()
        print(json.dumps(suppressions_json(rows), indent=2) if args.json
              else suppressions_table(rows))
    else:
        report = await queue_report(store)
        summary, suppressed = report, report["suppressed_addresses"]
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(counts_table(summary))
            print(f"suppressed addresses: {suppressed}"
                  + (" (emaild queue --suppressed lists them)" if suppressed else ""))
    return 0
