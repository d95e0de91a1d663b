"""
Where a py-spy profile of the daemon spends its time during an inbound
burst (bench/inbound.py --py-spy): every sample goes to the part whose
code is on its stack, read from the outside in, so work a coroutine does
after a Deferred fired counts for the part that awaited it:

  (a) accept: the SMTP server, its session and line layer, limits, the
      handler, sender authentication, group commit and member lookups;
  (b) relay: the relay processor (reading, scrubbing, composing the
      copies, its transactions, the outbox rows it inserts);
  (c) sender: the outbound sender (claim, maildir write, record);
  database I/O with no part on the stack (txpostgres polling a connection
  whose answer nobody has taken yet), the reactor, logging, idle.

    py-spy record --pid PID --idle --format raw -o prof.txt   # then:
    python bench/inbound_profile.py prof.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import table  # noqa: E402
from bench.profile_summary import sample_totals  # noqa: E402

ACCEPT = "(a) accept: SMTP session, lines, syntax, limits"
AUTH = "(a) accept: sender authentication (SPF/DKIM/DMARC)"
HANDLER = "(a) accept: handler, member lookup, group commit"
RELAY = "(b) relay processor: read, scrub, compose, its transactions"
SENDER = "(c) outbound sender: claim, maildir, record"
DB = "database I/O, no part on the stack (txpostgres polling)"

# the first of these found on a stack, outermost frame first, names its part
_PARTS = [
    ("emaild/inbound/relay.py", RELAY),
    ("emaild/inbound/reading.py", RELAY),
    ("emaild/outbound/sender", SENDER),
    ("emaild/outbound/transport", SENDER),
    ("emaild/outbound/maildir", SENDER),
    ("emaild/outbound/claim", SENDER),
    ("emaild/outbound/record", SENDER),
    ("emaild/inbound/auth/", AUTH),
    ("emaild/inbound/handler.py", HANDLER),
    ("emaild/inbound/groupcommit.py", HANDLER),
    ("emaild/inbound/memberlookup.py", HANDLER),
    ("emaild/inbound/session.py", ACCEPT),
    ("emaild/inbound/server.py", ACCEPT),
    ("emaild/inbound/lines.py", ACCEPT),
    ("emaild/inbound/limits.py", ACCEPT),
    ("emaild/inbound/inflow.py", ACCEPT),
    ("emaild/inbound/tls.py", ACCEPT),
]


THREADS = "thread pool: (c) maildir writes (off the reactor thread; mostly fsync waits)"


def category(frames: list[str]) -> str:
    if frames and frames[0].startswith("Thread._bootstrap"):
        if frames[-1].startswith("Condition.wait"):
            return "idle: thread pool waiting"
        return THREADS
    if frames and frames[-1].startswith("EPollReactor.doPoll") and len(frames) > 1 \
            and frames[-2].startswith("ReactorBase.mainLoop"):
        return "idle: reactor waiting in epoll"
    for frame in frames:
        for marker, part in _PARTS:
            if marker in frame:
                # the auth and handler frames sit under the session's: the
                # innermost accept-side frame names the finer category
                if part in (ACCEPT, HANDLER):
                    inner = [p for f in frames for m, p in _PARTS if m in f
                             and p in (ACCEPT, HANDLER, AUTH)]
                    return inner[-1]
                return part
    if any("emaild/db/" in f or "txpostgres" in f for f in frames):
        return DB
    if any("emaild/" in f for f in frames):
        return "other emaild code (metrics, notify, ...)"
    if any("twisted/logger/" in f for f in frames):
        return "logging (twisted.logger)"
    return "Twisted reactor, TCP, Deferreds (no emaild frame)"


def summary(path: Path) -> str:
    """Share of py-spy samples (raw format, --idle) per part."""
    totals = sample_totals(path, category)
    # shares of the reactor thread's busy samples (the thread pool's are
    # other threads: they are shown, but are not the reactor's time)
    busy = sum(n for label, n in totals.items()
               if not label.startswith("idle") and label != THREADS) or 1
    rows = [[label, n, "-" if label.startswith("idle") or label == THREADS
             else f"{100 * n / busy:.1f}%"]
            for label, n in sorted(totals.items(), key=lambda kv: -kv[1])]
    return (f"py-spy samples in {path}:\n"
            + table(["where", "samples", "of the reactor thread's busy samples"], rows))


def hottest(path: Path, top: int = 40) -> str:
    """The functions with the most own (leaf) samples."""
    own = sample_totals(path, lambda frames: frames[-1])
    rows = sorted(own.items(), key=lambda kv: -kv[1])[:top]
    return "\n".join(f"{n:7d}  {leaf}" for leaf, n in rows)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summary(Path(arg)))
        print(hottest(Path(arg)))
