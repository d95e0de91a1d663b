"""
CPU per message of the inbound SMTP session alone: emaild's InboundFactory
on 127.0.0.1 with a handler that answers every RCPT and every message at
the end of the reactor turn (no database, no authentication, no relay),
driven by Postfix's smtp-source (20 sessions, one ~2 KB message per
connection).  What it measures is the session and line layer and Twisted's
TCP under them: accept, seven replies, reads, close.

    PYTHONPATH=$PWD .venv/bin/python bench/inbound_lines.py [--messages 20000] [--rounds 3]

Run it in two checkouts, one after the other, to compare them (each imports
its own tree).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import defer, reactor, utils  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emaild.inbound.server import InboundFactory  # noqa: E402

POSTFIX = Path(__file__).resolve().parent.parent / ".tools" / "postfix"
SMTP_SOURCE = POSTFIX / "usr" / "sbin" / "smtp-source"


class NextTurnHandler:
    """Every recipient and message accepted, at the end of the reactor turn (as a query would)."""

    def check_recipient(self, address, mail_from):
        d: defer.Deferred = defer.Deferred()
        reactor.callLater(0, d.callback, ("rcpt", address))
        return d

    def deliver(self, envelope, raw):
        d: defer.Deferred = defer.Deferred()
        reactor.callLater(0, d.callback, "queued")
        return d


def cpu_seconds() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


async def one_round(port: int, messages: int, sessions: int) -> tuple[float, float, float]:
    (u0, s0), t0 = cpu_seconds(), time.perf_counter()
    env = {**os.environ, "LD_LIBRARY_PATH": str(POSTFIX / "usr" / "lib" / "postfix")}
    out, err, code = await utils.getProcessOutputAndValue(str(SMTP_SOURCE), [
        "-s", str(sessions), "-m", str(messages), "-l", "2048", "-f", "s@example.org",
        "-t", "a@relay.test", "-M", "client.test", f"127.0.0.1:{port}"], env=env)
    if code != 0:
        raise SystemExit(f"smtp-source failed: {(out + err).decode(errors='replace')}")
    (u1, s1), seconds = cpu_seconds(), time.perf_counter() - t0
    return messages / seconds, (u1 - u0) * 1000 / messages, (s1 - s0) * 1000 / messages


async def main(args) -> None:
    factory = InboundFactory(NextTurnHandler(), hostname="mx.test", reactor=reactor,
                             max_sessions=200, max_sessions_per_client=200,
                             max_connections_per_minute=10**9)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1").getHost().port
    rows = []
    for i in range(args.rounds):
        rate, user, system = await one_round(port, args.messages, args.sessions)
        rows.append((rate, user + system, user, system))
        print(f"round {i + 1}: {rate:.0f} msgs/s, server CPU {user + system:.3f} ms/msg "
              f"(user {user:.3f}, system {system:.3f})", flush=True)
    print(f"median: {statistics.median(r[0] for r in rows):.0f} msgs/s, "
          f"{statistics.median(r[1] for r in rows):.3f} ms CPU per message "
          f"({args.messages} messages, {args.sessions} sessions, code from {sys.path[0]})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    if not SMTP_SOURCE.exists():
        raise SystemExit("smtp-source missing: run scripts/tools.sh")

    def run():
        d = defer.ensureDeferred(main(arguments))
        d.addErrback(lambda f: print(f.getTraceback(), file=sys.stderr))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
