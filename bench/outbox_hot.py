"""
Would heap-only (HOT) updates of `outbox` save PostgreSQL CPU?  The two
per-message UPDATEs (claim: queued -> sending; record: sending -> sent) are
never HOT, because `state`, `next_attempt_at` and `lease_until` appear in
the partial indexes `outbox_due` and `outbox_leases`.  This runs the
sender's claim and record statements (batches of 128, one transaction each,
as the sender does) over N rows, interleaved:

  as is                    the schema as migrated
  no state indexes, ff 60  both partial indexes dropped, fillfactor 60: the
                           upper bound of what a HOT-friendly schema (the
                           queue in its own table) could save on these
                           statements; the claim then scans the table

and prints PostgreSQL's CPU per row (all its processes), n_tup_upd and
n_tup_hot_upd, and the heap size.

    python bench/outbox_hot.py [N] [ROUNDS]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Bench, cpu_seconds, reexec_in_venv  # noqa: E402

BATCH = 128
VARIANTS = {
    "as is": [],
    "no state indexes, ff 60": ["DROP INDEX IF EXISTS outbox_due",
                                "DROP INDEX IF EXISTS outbox_leases",
                                "ALTER TABLE outbox SET (fillfactor = 60)"],
}
RESTORE = [
    "TRUNCATE outbox, outbox_attempts RESTART IDENTITY CASCADE",
    "ALTER TABLE outbox RESET (fillfactor)",
    "CREATE INDEX IF NOT EXISTS outbox_due ON outbox (priority DESC, next_attempt_at, id)"
    " WHERE state = 'queued'",
    "CREATE INDEX IF NOT EXISTS outbox_leases ON outbox (lease_until) WHERE state = 'sending'",
]
CLAIM = ("SELECT id FROM outbox WHERE state = 'queued' AND next_attempt_at <= now()"
         " ORDER BY priority DESC, next_attempt_at, id LIMIT %s FOR UPDATE SKIP LOCKED")
LEASE = ("UPDATE outbox SET state = 'sending', lease_owner = 'bench',"
         " lease_until = now() + interval '60 s', updated_at = now() WHERE id = ANY(%s)")
RECORD = ("UPDATE outbox o SET state = v.state, attempts = v.attempts,"
          " reason = v.reason, lease_owner = NULL, lease_until = NULL, updated_at = now(),"
          " finished_at = now()"
          " FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[])"
          "   AS v(id, state, attempts, reason)"
          " WHERE o.id = v.id AND o.state = 'sending' AND o.lease_owner = 'bench'")
ATTEMPTS = ("INSERT INTO outbox_attempts (outbox_id, outcome, code, reply, sender)"
            " SELECT *, 'bench' FROM unnest(%s::bigint[], %s::text[], %s::int[], %s::text[])")


def run(b: Bench, n: int, ddl: list[str]) -> dict:
    for query in RESTORE + ddl:
        b.sql(query)
    # rows like the welcome message's: ~1.1 KB body, unique bounce address
    b.sql("INSERT INTO outbox (template, qos, priority, recipient, envelope_from, message_id,"
          " body, batch) SELECT 'welcome', 'bulk', 0, 's' || i || '@example.edu',"
          " 'b-' || i || '@relay.example', '<' || i || '@x>',"
          " convert_to(repeat(md5(i::text), 34), 'UTF8'), 'bench'"
          " FROM generate_series(1, %s) i", (n,))
    b.sql("VACUUM ANALYZE outbox")
    b.sql("CHECKPOINT")
    b.sql("SELECT pg_stat_reset()")
    pg = b.postmaster_pid()
    cpu0 = cpu_seconds(pg)
    conn = b.conn
    conn.autocommit = False
    with conn.cursor() as cur:
        while True:
            cur.execute(CLAIM, (BATCH,))
            ids = [r[0] for r in cur.fetchall()]
            if not ids:
                conn.commit()
                break
            cur.execute(LEASE, (ids,))
            conn.commit()
            k = len(ids)
            cur.execute(RECORD, (ids, ["sent"] * k, [1] * k, ["250 ok"] * k))
            cur.execute(ATTEMPTS, (ids, ["sent"] * k, [250] * k, ["2.0.0 Ok: queued"] * k))
            conn.commit()
    conn.autocommit = True
    cpu = cpu_seconds(pg) - cpu0
    time.sleep(1.0)  # let the statistics arrive
    b.sql("SELECT pg_stat_clear_snapshot()")
    (upd, hot), = b.sql("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                        " WHERE relname = 'outbox'")
    (heap,), = b.sql("SELECT pg_relation_size('outbox')")
    return {"ms": cpu * 1000 / n, "upd": upd, "hot": hot, "heap": heap // 1024}


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with Bench("outbox-hot") as b:
        for r in range(rounds):
            for name, ddl in VARIANTS.items():
                x = run(b, n, ddl)
                print(f"round {r + 1}: {name:24s} PostgreSQL {x['ms']:.3f} ms/row,"
                      f" updates {x['upd']} of which HOT {x['hot']}, heap {x['heap']} KiB",
                      flush=True)


if __name__ == "__main__":
    reexec_in_venv()
    main()
