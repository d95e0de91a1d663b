"""
(c) Enqueueing personalised messages with the CLI:

    emaild --config bench.toml send --template welcome --recipients N.csv

for CSVs of 10,000, 50,000 and 100,000 rows (email, name, course, cohort)
and the built-in `welcome` template (text + HTML parts).  Wall time, CPU and
peak memory (max RSS, from wait4) of the CLI process, and the CPU
PostgreSQL (embedded, in the bench state dir, already running) spent while
the CLI ran, both also per 1,000 messages (what a loaded machine moves
least).  The outbox is emptied before each size.

    python bench/enqueue.py [--quick] [--sizes 10000,50000,100000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Bench,
    cpu_seconds,
    reexec_in_venv,
    table,
    wait_quiet,
    write_csv,
)

#: the target for the largest size (issue 12)
TARGET_SECONDS = 8.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="sizes 1000,5000,10000")
    parser.add_argument("--sizes", default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--max-wait", type=float, default=120.0, metavar="SECONDS",
                        help="how long to wait for a quiet machine before each size")
    args = parser.parse_args()
    sizes = [int(s) for s in (args.sizes or ("1000,5000,10000" if args.quick
                                             else "10000,50000,100000")).split(",")]
    rows = []
    with Bench("enqueue", keep=args.keep) as b:
        config = b.config()
        print("warming up (imports, page cache) with 100 rows ...", flush=True)
        b.enqueue(config, write_csv(b.dir / "warmup.csv", 100))
        for n in sizes:
            b.reset_outbox()
            b.sql("CHECKPOINT")
            csv_path = write_csv(b.dir / f"students-{n}.csv", n)
            print(f"queueing {n} ...", flush=True)
            busy = wait_quiet(max_wait=args.max_wait)
            postmaster = b.postmaster_pid()
            pg0 = cpu_seconds(postmaster)
            seconds, rss, cpu = b.enqueue(config, csv_path)
            pg = cpu_seconds(postmaster) - pg0
            queued = b.sql("SELECT count(*), avg(length(body)) FROM outbox"
                           " WHERE state = 'queued'")[0]
            if queued[0] != n:
                raise RuntimeError(f"{queued[0]} rows queued, expected {n}")
            rows.append([n, f"{seconds:.2f}", f"{n / seconds:.0f}", f"{cpu:.2f}", f"{pg:.2f}",
                         f"{1000 * cpu / n:.3f}", f"{1000 * pg / n:.3f}", f"{rss:.0f}",
                         f"{queued[1]:.0f}", csv_path.stat().st_size // 1024,
                         f"{busy:.0%}"])
            time.sleep(1)
    print()
    print(table(["rows", "seconds", "rows/s", "cli cpu s", "pg cpu s", "cli s/1k", "pg s/1k",
                 "max RSS MiB", "msg bytes", "csv KiB", "busy before"], rows))
    big = max(rows, key=lambda r: r[0])
    rss = [float(r[7]) for r in rows]
    fast = float(big[1]) < TARGET_SECONDS
    print(f"\n{big[0]} rows in {big[1]} s: target < {TARGET_SECONDS:g} s"
          f" {'met' if fast else 'MISSED'};"
          f" max RSS {min(rss):.0f}..{max(rss):.0f} MiB across sizes "
          f"({'flat' if max(rss) < 1.2 * min(rss) else 'GROWS'})")


if __name__ == "__main__":
    reexec_in_venv()
    main()
