"""
(d) kill -9 recovery: the daemon sends N messages at a moderate rate to the
recording relay (bench/throttling_relay.py --rate 0 logs every accepted
message's envelope sender, unique per message: bounces+<token>@...).  When
the relay has accepted --kill-at of them, the daemon gets SIGKILL; the rows
in state 'sending' are counted (their result was never recorded: the only
messages that may legitimately be delivered twice); then the daemon is
restarted with the same configuration ([relay] lease = "15s", so expired
leases come back quickly) and runs until every row is terminal.

    python bench/recovery.py [--quick] [--messages 5000] [--rate 100] [--kill-at 2000]
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Bench, Relay, reexec_in_venv, table, wait_for, wait_quiet, write_csv  # noqa: E402

LEASE = 15.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 messages, kill at 400")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--rate", type=float, default=100.0, help="daemon rate (recipients/s)")
    parser.add_argument("--kill-at", type=int, default=None, help="relay-accepted count")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    n = args.messages or (1000 if args.quick else 5000)
    kill_at = args.kill_at or int(n * 0.4)

    with Bench("recovery", keep=args.keep) as b:
        relay = Relay(b, rate=0)
        config = b.config(port=relay.port, rate=args.rate, burst=args.rate, connections=4,
                          lease=f"{LEASE:g}s")
        b.enqueue(config, write_csv(b.dir / "students.csv", n))
        print(f"{n} queued; sending at {args.rate:g}/s, kill -9 after {kill_at} accepted",
              flush=True)
        wait_quiet()
        daemon = b.start_daemon(config)
        wait_for(lambda: relay.accepted_count() >= kill_at, n / args.rate * 3 + 60, 0.01,
                 f"{kill_at} messages at the relay")
        os.kill(daemon.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        daemon.wait()
        b.procs.remove(daemon)
        # its PostgreSQL sessions end (and roll back) once the server notices
        wait_for(lambda: not b.sql("SELECT 1 FROM pg_stat_activity WHERE application_name"
                                   " = 'emaild'"), 30, 0.05, "the daemon's sessions to end")
        at_kill = b.counts()
        sending = {s for (s,) in b.sql("SELECT envelope_from FROM outbox WHERE state = 'sending'")}
        relay_at_kill = relay.accepted_count()
        print(f"killed: {at_kill}; relay had accepted {relay_at_kill}", flush=True)

        time.sleep(1.0)
        restarted = time.monotonic()
        daemon = b.start_daemon(config, "daemon-restarted.log")
        wait_for(lambda: not b.sql("SELECT 1 FROM outbox WHERE envelope_from = ANY(%s)"
                                   " AND state = 'sending'", (list(sending),)),
                 LEASE * 4 + 60, 0.1, "the killed daemon's leases to be recovered")
        recovered = time.monotonic()
        wait_for(lambda: b.terminal() >= n, n / args.rate * 3 + LEASE * 4 + 60, 0.2,
                 "every row to be terminal")
        done = time.monotonic()
        b.end(daemon)
        b.end(relay.proc)
        final = b.counts()
        sent_rows = {s for (s,) in b.sql("SELECT envelope_from FROM outbox WHERE state = 'sent'")}
        accepted = collections.Counter(s for _, code, s, _ in relay.records() if code == 250)

    twice = {s: c for s, c in accepted.items() if c > 1}
    rows = [
        ["messages", n],
        ["daemon rate, lease", f"{args.rate:g}/s, {LEASE:g}s"],
        ["accepted by the relay at the kill", relay_at_kill],
        ["rows at the kill", " ".join(f"{k}={v}" for k, v in at_kill.items() if v)],
        ["rows 'sending' at the kill", len(sending)],
        ["restart -> killed leases requeued (s)", f"{recovered - restarted:.1f}"],
        ["restart -> every row terminal (s)", f"{done - restarted:.1f}"],
        ["kill -> every row terminal (s)", f"{done - killed_at:.1f}"],
        ["all terminal", "yes" if sum(final[k] for k in ("sent", "failed", "suppressed")) == n
         else "NO"],
        ["final rows", " ".join(f"{k}={v}" for k, v in final.items() if v)],
        ["messages delivered twice", len(twice)],
        ["extra deliveries", sum(c - 1 for c in twice.values())],
        ["... of which not 'sending' at the kill", len(set(twice) - sending)],
        ["'sent' rows the relay never accepted", len(sent_rows - set(accepted))],
        ["accepted by the relay, row not 'sent'", len(set(accepted) - sent_rows)],
    ]
    print()
    print(table(["kill -9 recovery", "result"], rows))
    ok = (final["sent"] == n and not set(twice) - sending and not sent_rows - set(accepted))
    print(f"\nevery row terminal and sent, duplicates only among rows 'sending' at the kill,"
          f" nothing lost: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    reexec_in_venv()
    main()
