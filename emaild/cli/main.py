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
    emaild [--config PATH] lti (keys | rotate-key | retire-key KID)
    emaild [--config PATH] course sync COURSE

It reads the daemon's configuration (C{--config}, else C{$EMAILD_CONFIG},
else built-in defaults) and talks to the same database, starting the
embedded PostgreSQL under the state directory when no URL is configured.

Exit codes: 0 success; 1 the work failed (database unreachable, unknown
template or class, rejected recipients, failed checks); 2 bad arguments or
configuration; 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import traceback

from twisted.internet import defer, task
from twisted.python.failure import Failure

from emaild import __version__
from emaild.cli.arguments import Parser
from emaild.cli.output import CliError, Interrupted, one_line
from emaild.cli.runtime import CommandParts, Interruption
from emaild.config import ConfigError, load_config

#: the command modules, in the order C{emaild --help} lists them; a
#: module's name is its command's.  Each has C{add_parser(commands, common)}
#: (see L{emaild.cli.runtime}).  A new command is a new module and one line
#: here.
COMMANDS = (
    "emaild.cli.send",
    "emaild.cli.queue",
    "emaild.cli.check",
    "emaild.cli.person",
    "emaild.cli.group",
    "emaild.cli.inbound",
    "emaild.cli.digest",
    "emaild.cli.announce",
    "emaild.cli.lti",
    "emaild.cli.course",
)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="TOML configuration file (default: $EMAILD_CONFIG, else built-in defaults)")
    parser = Parser(prog="emaild", description="Queue course e-mail and watch the queue.")
    parser.add_argument("--config", metavar="PATH", default=None,
                        help="TOML configuration file (default: $EMAILD_CONFIG, else built-in defaults)")
    parser.add_argument("--version", action="version", version=f"emaild {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(commands, common)
    return parser


# -- running ---------------------------------------------------------------------


async def _command(reactor, args, config) -> int:
    parts = CommandParts(config, reactor)
    try:
        return await args.func(parts, args)
    finally:
        await parts.close()


def _react_main(reactor, args, config):
    """
    Run the command and turn its outcome into an exit code; Ctrl-C exits 130.
    """
    args.interruption = interruption = Interruption(reactor)

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
            names = ", ".join(name.rsplit(".", 1)[-1] for name in COMMANDS)
            parser.error(f"no command given; use one of: {names} (see emaild --help)")
        # checks argparse cannot express, answered as argument errors (exit 2)
        problem = args.check_arguments(args) if hasattr(args, "check_arguments") else None
        if problem:
            parser.error(problem)
        path = args.config or os.environ.get("EMAILD_CONFIG") or None
        try:
            config = load_config(path)
        except ConfigError as e:
            print(f"emaild: configuration error: {one_line(e)}", file=sys.stderr)
            raise SystemExit(2) from None
        task.react(_react_main, (args, config))
    except KeyboardInterrupt:
        raise SystemExit(130) from None

