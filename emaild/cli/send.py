"""
C{emaild send}: render a template for each recipient and queue it.

    emaild send --template NAME [--qos NAME] [--batch LABEL]
                (--to EMAIL [--context JSON] ... | --recipients FILE.csv)
"""

from __future__ import annotations

import argparse
import json
import sys

from emaild.cli.csv_input import open_csv, send_csv
from emaild.cli.output import CliError, one_line
from emaild.cli.runtime import open_database
from emaild.outbound.compose import ComposeError


class _ToAction(argparse.Action):
    """
    C{--to EMAIL}: appends C{[EMAIL, None]}; a following C{--context} fills
    in the None.
    """

    def __call__(self, parser, namespace, value, option_string=None):
        pairs = list(getattr(namespace, self.dest) or [])
        pairs.append([value, None])
        setattr(namespace, self.dest, pairs)


class _ContextAction(argparse.Action):
    """
    C{--context JSON}: the template context of the C{--to} right before it.
    """

    def __call__(self, parser, namespace, value, option_string=None):
        pairs = getattr(namespace, "to", None)
        if not pairs:
            raise argparse.ArgumentError(self, "must follow the --to EMAIL it belongs to")
        if pairs[-1][1] is not None:
            raise argparse.ArgumentError(self, f"given twice for --to {pairs[-1][0]}")
        try:
            context = json.loads(value)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentError(self, f"{value!r} is not valid JSON: {e}") from None
        if not isinstance(context, dict):
            raise argparse.ArgumentError(
                self, f"must be a JSON object such as '{{\"name\": \"Ada\"}}', got {value!r}")
        pairs[-1][1] = context


def add_parser(commands, common) -> None:
    send = commands.add_parser("send", parents=[common], help="queue a template for recipients",
                               usage="emaild send [-h] --template NAME [--qos NAME] [--batch LABEL]\n"
                                     "       (--to EMAIL [--context JSON] ... | --recipients FILE.csv)",
                               description="Render a template for each recipient and queue it.")
    send.add_argument("--template", required=True, metavar="NAME", help="template name, e.g. welcome")
    send.add_argument("--qos", metavar="NAME", help="QoS class (default: default)")
    send.add_argument("--batch", metavar="LABEL",
                      help="label stored with every message (default for a CSV: its file name)")
    who = send.add_mutually_exclusive_group(required=True)
    who.add_argument("--to", action=_ToAction, metavar="EMAIL", help="a recipient (repeatable)")
    who.add_argument("--recipients", metavar="FILE.csv",
                     help="CSV with an 'email' column; other columns are each row's context")
    send.add_argument("--context", action=_ContextAction, metavar="JSON",
                      help="JSON object: template values for the --to right before it")
    send.set_defaults(func=run)


async def run(parts, args) -> int:
    config = parts.config
    if args.qos is not None and args.qos not in config.qos:
        raise CliError(f"no QoS class {args.qos!r}; configured: {', '.join(sorted(config.qos))}")
    outbox = parts.get_outbox()
    try:
        outbox.composer.templates(args.template)
    except ComposeError as e:
        raise CliError(str(e)) from None
    if args.recipients is None:
        await open_database(parts)
        return await _send_to(outbox, args)
    f, reader = open_csv(args.recipients)
    with f:
        await open_database(parts)
        return await send_csv(outbox, reader, args.recipients, args.template, args.qos,
                              args.batch, args.interruption.check)


async def _send_to(outbox, args) -> int:
    recipients = [(to, context or {}) for to, context in args.to]
    try:
        report = await outbox.enqueue(args.template, recipients, qos=args.qos, batch=args.batch)
    except ComposeError as e:
        raise CliError(str(e)) from None
    for message_id in report.ids:
        print(message_id)
    for r in report.rejected:
        print(f"emaild: not queued: {r.recipient}: {one_line(r.reason)}", file=sys.stderr)
    return 1 if report.rejected else 0
