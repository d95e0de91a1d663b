"""
Where a py-spy profile of the daemon spends its time: every sample goes to
the innermost emaild frame on its stack (claim transaction, record
transaction, SMTP client, sender), else to the reactor, txpostgres or idle.

    py-spy record --pid PID --idle --format raw -o prof.txt   # then:
    python bench/profile_summary.py prof.txt

(bench/throughput.py --profile does both.)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import table  # noqa: E402


def _profile_category(frames: list[str]) -> str:
    """Attribute a sample to the innermost emaild frame, else to what runs."""
    if frames and frames[0].startswith("Thread._bootstrap") \
            and frames[-1].startswith("Condition.wait"):
        return "idle: thread pool (name resolution) waiting"
    # frames name files relative to sys.path entries, or absolutely when
    # PYTHONPATH points at a work tree: "(emaild/..." or "(/path/emaild/..."
    ours = [f.replace("/emaild/", "(emaild/") for f in frames if "emaild/" in f]
    if ours:
        leaf = ours[-1]
        if "(emaild/outbound/store.py" in leaf or "(emaild/outbound/claim_store.py" in leaf:
            name = leaf.split(" ")[0].rsplit(".", 1)[-1]
            return {"claim_txn": "claim transaction (claim_txn)",
                    "opted_out_txn": "claim transaction (claim_txn)",
                    "record_txn": "record transaction (record_txn)",
                    "record_sent_txn": "record transaction (record_txn)",
                    "record_outcomes_txn": "record transaction (record_txn)"}.get(
                name, "other queries (lease recovery, next_due)")
        if "(emaild/outbound/smtp" in leaf:
            return "SMTP client (smtp.py, smtpclient.py)"
        if "(emaild/outbound/sender.py" in leaf or "(emaild/outbound/policy.py" in leaf:
            return "sender bookkeeping (sender.py, policy.py)"
        if "(emaild/db/" in leaf:
            return "PostgreSQL I/O (txpostgres via db/database.py)"
        return "other emaild code"
    if frames and frames[-1].startswith("EPollReactor.doPoll") and len(frames) > 1 \
            and frames[-2].startswith("ReactorBase.mainLoop"):
        return "idle: reactor waiting in epoll"
    if any("txpostgres" in f for f in frames):
        return "txpostgres/psycopg2 I/O (no emaild frame)"
    if any("twisted/logger/" in f for f in frames):
        return "logging (twisted.logger)"
    if any(f.startswith("untilConcludes") for f in frames[-2:]):
        return "socket send() syscalls (SMTP writes)"
    return "Twisted reactor, TCP, Deferreds"


def sample_totals(path: Path, label_of: Callable[[list[str]], str]) -> dict[str, int]:
    """py-spy samples (raw/collapsed format) per label_of(frames, outermost first)."""
    totals: dict[str, int] = {}
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            label = label_of(stack.split(";"))
            totals[label] = totals.get(label, 0) + int(count)
    return totals


def profile_summary(path: Path) -> str:
    """Share of py-spy samples (raw/collapsed format, --idle) per category."""
    totals = sample_totals(path, _profile_category)
    every = sum(totals.values())
    busy = every - sum(n for label, n in totals.items() if label.startswith("idle"))
    rows = [[label, n, f"{100 * n / every:.1f}%",
             "-" if label.startswith("idle") else f"{100 * n / busy:.1f}%"]
            for label, n in sorted(totals.items(), key=lambda kv: -kv[1])]
    return f"py-spy samples in {path}:\n" + table(["where", "samples", "of wall", "of busy"], rows)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(profile_summary(Path(path)))
