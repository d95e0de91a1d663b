"""
The C{emaild} command: queue mail, watch the queue, check an installation.

    emaild [--config PATH] send --template NAME [--qos NAME] [--batch LABEL]
                                (--to EMAIL [--context JSON] ... | --recipients FILE.csv)
    emaild [--config PATH] queue [--json] [--failed [--limit N] | --suppressed]
    emaild [--config PATH] queue --watch [--interval S]
    emaild [--config PATH] check
    emaild [--config PATH] person (add EMAIL [--name NAME] [--course KEY]
                                   | list [--course KEY] [--json] | import FILE.csv)
    emaild [--config PATH] inbound [--json] [--state STATE ...] [MESSAGE_ID]
    emaild [--config PATH] group (add --course KEY NAME | list [--course KEY] [--json]
                                  | members GROUP [--all] [--json] | import FILE.csv
                                  | join GROUP EMAIL | leave GROUP EMAIL)
    emaild [--config PATH] digest (--course KEY --note TEXT [--week W]
                                   | --preview PERSON [--course KEY] [--week W]
                                   | --send-now [--course KEY])
    emaild [--config PATH] announce --template NAME (--course KEY | --group GROUP
                                    | --people FILE.csv | --to EMAIL ...)
                                    [--context JSON] [--subject TEXT] [--no-wait]
    emaild [--config PATH] announce (--status LABEL [--json] | --resend-failed LABEL)

It reads the daemon's configuration (C{--config}, else C{$EMAILD_CONFIG},
else built-in defaults) and talks to the same database, starting the
embedded PostgreSQL under the state directory when no URL is configured.

Exit codes: 0 success; 1 the work failed (database unreachable, unknown
template or class, rejected recipients, failed checks); 2 bad arguments or
configuration; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import traceback

from twisted.internet import defer, task
from twisted.python.failure import Failure

from emaild import __version__
from emaild.cli_check import run_checks
from emaild.cli_inbound import add_inbound_commands
from emaild.cli_csv import open_csv, send_csv
from emaild.cli_output import (CliError, Interrupted, counts_table, drained_line,
                               failures_json, failures_table, one_line, progress_line,
                               suppressions_json, suppressions_table)
from emaild.cli_announce import add_announce_commands
from emaild.cli_digest import add_digest_commands
from emaild.cli_groups import add_group_commands
from emaild.cli_people import add_person_commands
from emaild.config import ConfigError, load_config
from emaild.outbound.compose import ComposeError
from emaild.outbound.stats import finished, pending, queue_report, queue_summary

# -- arguments -------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of the usage dump
        self.exit(2, f"emaild: error: {' '.join(message.split())}\n")


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


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="TOML configuration file (default: $EMAILD_CONFIG, else built-in defaults)")
    parser = _Parser(prog="emaild", description="Queue course e-mail and watch the queue.")
    parser.add_argument("--config", metavar="PATH", default=None,
                        help="TOML configuration file (default: $EMAILD_CONFIG, else built-in defaults)")
    parser.add_argument("--version", action="version", version=f"emaild {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

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
    send.set_defaults(func=_send)

    queue = commands.add_parser("queue", parents=[common], help="show the outbox",
                                description="Counts per state and class, failures, or a progress bar.")
    mode = queue.add_mutually_exclusive_group()
    mode.add_argument("--failed", action="store_true", help="list failed messages with their last reply")
    mode.add_argument("--watch", action="store_true", help="show a progress bar until the queue drains")
    mode.add_argument("--suppressed", action="store_true",
                      help="list the suppressed addresses (nothing is sent to them) and why")
    queue.add_argument("--json", action="store_true", help="print JSON (counts, or failures with --failed)")
    queue.add_argument("--limit", type=_positive(int), default=50, metavar="N",
                       help="failures to list (default 50)")
    queue.add_argument("--interval", type=_positive(float), default=1.0, metavar="SECONDS",
                       help="seconds between --watch updates (default 1)")
    queue.set_defaults(func=_queue)

    check = commands.add_parser("check", parents=[common], help="validate config, database and templates",
                                description="Validate the configuration, connect to the database "
                                            "and compile every template.")
    check.set_defaults(func=_check)

    add_person_commands(commands, common)
    add_group_commands(commands, common)
    add_inbound_commands(commands, common)
    add_digest_commands(commands, common)
    add_announce_commands(commands, common)
    return parser


# -- running ---------------------------------------------------------------------


async def _open(db, embedded) -> None:
    """
    L{open_database}, with any failure turned into one clear line.
    """
    import psycopg2

    from emaild.db.database import DatabaseUnavailable
    from emaild.db.embedded import EmbeddedPostgresError

    try:
        await _homeserver.open_database()
    except EmbeddedPostgresError as e:
        first = (str(e).strip().splitlines() or ["failed"])[0]
        raise CliError(f"cannot start the embedded PostgreSQL: {first} "
                       f"(see {embedded.data_dir / 'server.log'})") from None
    except (DatabaseUnavailable, psycopg2.Error, OSError) as e:
        raise CliError(f"cannot open the database: {one_line(e)}") from None


def _outbox(config, db):
    try:
        return _homeserver.get_outbox()
    except (FileNotFoundError, RuntimeError) as e:
        raise CliError(f"configuration error: {e}", 2) from None


#: the composition root of the running command (see _command)
_homeserver = None


def _parts():
    """The running command's HomeServer: every store and part, built once."""
    return _homeserver


async def _command(reactor, args, config) -> int:
    global _homeserver
    from emaild.homeserver import HomeServer

    _homeserver = HomeServer(config, reactor)
    db, embedded = _homeserver.get_database(), _homeserver.get_embedded_postgres()
    try:
        return await args.func(reactor, args, config, db, embedded)
    finally:
        # the embedded server stops only if no daemon (or other command) uses it
        await _homeserver.close_database()


class _Interruption:
    """
    Ctrl-C asks the command to stop at its next safe point: after the
    current transaction, or at once while it sleeps.  (Cancelling a query in
    flight is not safe: txpostgres cannot always cancel cleanly.)
    """

    def __init__(self, reactor):
        self.reactor = reactor
        self.requested = False
        self._sleeping: defer.Deferred | None = None

    def request(self) -> None:
        self.requested = True
        if self._sleeping is not None:
            self._sleeping.cancel()

    def check(self) -> None:
        if self.requested:
            raise Interrupted()

    async def sleep(self, seconds: float) -> None:
        self.check()
        self._sleeping = task.deferLater(self.reactor, seconds, lambda: None)
        try:
            await self._sleeping
        except defer.CancelledError:
            pass
        finally:
            self._sleeping = None
        self.check()


def _react_main(reactor, args, config):
    """
    Run the command and turn its outcome into an exit code; Ctrl-C exits 130.
    """
    args.interruption = interruption = _Interruption(reactor)

    def on_sigint(signum, frame):
        if interruption.requested:
            os._exit(130)  # a second Ctrl-C: do not wait for the cleanup
        reactor.callFromThread(interruption.request)

    reactor.callWhenRunning(signal.signal, signal.SIGINT, on_sigint)

    def finish(result):
        if isinstance(result, Failure):
            if result.check(CliError):
                print(f"emaild: {result.value.message}", file=sys.stderr)
                raise SystemExit(result.value.code)
            if result.check(SystemExit):
                return result
            if not result.check(Interrupted):
                print("emaild: internal error:", file=sys.stderr)
                traceback.print_exception(result.type, result.value, result.getTracebackObject())
                raise SystemExit(1)
        if interruption.requested:
            if sys.stdout.isatty():
                sys.stdout.write("\n")
            raise SystemExit(130)
        raise SystemExit(result or 0)

    return defer.Deferred.fromCoroutine(_command(reactor, args, config)).addBoth(finish)


def main(argv=None) -> None:
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("no command given; use one of: send, queue, check, person, group, "
                         "inbound, digest, announce (see emaild --help)")
        if args.command == "queue" and args.json and args.watch:
            parser.error("argument --json: not allowed with argument --watch")
        path = args.config or os.environ.get("EMAILD_CONFIG") or None
        try:
            config = load_config(path)
        except ConfigError as e:
            print(f"emaild: configuration error: {one_line(e)}", file=sys.stderr)
            raise SystemExit(2) from None
        task.react(_react_main, (args, config))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


# -- send ------------------------------------------------------------------------


async def _send(reactor, args, config, db, embedded) -> int:
    if args.qos is not None and args.qos not in config.qos:
        raise CliError(f"no QoS class {args.qos!r}; configured: {', '.join(sorted(config.qos))}")
    outbox = _outbox(config, db)
    try:
        outbox.composer.templates(args.template)
    except ComposeError as e:
        raise CliError(str(e)) from None
    if args.recipients is None:
        await _open(db, embedded)
        return await _send_to(outbox, args)
    f, reader = open_csv(args.recipients)
    with f:
        await _open(db, embedded)
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


# -- queue -----------------------------------------------------------------------


async def _queue(reactor, args, config, db, embedded) -> int:
    await _open(db, embedded)
    store = _homeserver.get_outbox_store()
    if args.failed:
        rows = await store.failures(args.limit)
        print(json.dumps(failures_json(rows), indent=2) if args.json else failures_table(rows))
    elif args.watch:
        async def summary():
            return queue_summary(await store.counts())

        await _watch(reactor, summary, args.interval, args.interruption)
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


async def _watch(reactor, summarise, interval: float, interruption: _Interruption) -> None:
    """
    Redraw a progress line until nothing is queued or sending; the rate is
    over the last ~15 seconds.

    @param summarise: fires with the L{queue_summary} to draw (the whole
        outbox, or one batch: C{emaild announce} watches its own).
    """
    out = sys.stdout
    tty = out.isatty()
    samples: list[tuple[float, int]] = []
    drawn = 0

    def redraw(line: str) -> None:  # one screen line, or \r cannot redraw it
        nonlocal drawn
        line = line[:shutil.get_terminal_size().columns - 1]
        out.write("\r" + line.ljust(drawn))
        out.flush()
        drawn = max(drawn, len(line))

    while True:
        summary = await summarise()
        now, done = reactor.seconds(), finished(summary)
        samples.append((now, done))
        while len(samples) > 2 and now - samples[0][0] > 15:
            samples.pop(0)
        elapsed = now - samples[0][0]
        rate = max(0, done - samples[0][1]) / elapsed if elapsed > 0 else 0.0
        if pending(summary) == 0:
            if tty and drawn:
                redraw(progress_line(summary, rate))
                out.write("\n")
            print(drained_line(summary), flush=True)
            return
        if tty:
            redraw(progress_line(summary, rate))
        else:
            print(progress_line(summary, rate), flush=True)
        await interruption.sleep(interval)


# -- check -----------------------------------------------------------------------


async def _check(reactor, args, config, db, embedded) -> int:
    where = (f"embedded PostgreSQL in {embedded.data_dir}" if embedded is not None
             else one_line(config["database"]["url"]))

    async def open_db():
        await _open(db, embedded)
        return where

    return await run_checks(config, db, open_db)
