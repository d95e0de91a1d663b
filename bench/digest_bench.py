"""
The weekly update for a large course:

    emaild --config bench.toml digest --send-now --course cN

for courses of 2,000, 5,000 and 10,000 learners (groups of 10; each group
has 2 new threads, 6 replies and a new member in the week, so every learner
gets a full update with a login link and an unsubscribe link).  People,
memberships and posts are bulk-inserted with SQL.  Each size is run
--repeat times (default 3) after emptying the outbox, the links and the
digest tables; the table gives medians of the CLI process's wall time,
CPU and peak memory (max RSS, from wait4: the process doing the rendering
and queueing), and the time the run itself took (its log line), without
interpreter start-up.  PostgreSQL (embedded) is already running and not
counted.

    python bench/digest_bench.py [--sizes 2000,5000,10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, Bench, median, python, reexec_in_venv, table, wait_quiet  # noqa: E402


def populate(b: Bench, sizes: list[int]) -> None:
    """
    max(sizes) learners; course cN has the first N of them, in groups of 10,
    plus one instructor.
    """
    import datetime

    from emaild.digest import weeks

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = weeks.window(weeks.label_of(now), "monday", 8)
    inside = end - (end - start) / 2
    before = start - datetime.timedelta(days=3)
    n = max(sizes)
    b.sql("INSERT INTO people (email, display_name)"
          " SELECT 'learner' || i || '@bench.example.org', 'Learner ' || i"
          " FROM generate_series(1, %s) i", (n,))
    b.sql("INSERT INTO people (email, display_name) VALUES"
          " ('teacher@bench.example.org', 'Teacher')")
    for size in sizes:
        ((course,),) = b.sql("INSERT INTO courses (consumer_key, context_id, title)"
                             " VALUES ('', %s, %s) RETURNING id",
                             (f"c{size}", f"Bench course of {size}"))
        b.sql("INSERT INTO course_members (course_id, person_id, roles)"
              " SELECT %s, id, '{Learner}' FROM people"
              " WHERE email LIKE 'learner%%' AND id <= (SELECT min(id) FROM people) + %s - 1",
              (course, size))
        b.sql("INSERT INTO course_members (course_id, person_id, roles)"
              " SELECT %s, id, '{urn:lti:role:ims/lis/Instructor}' FROM people"
              " WHERE email = 'teacher@bench.example.org'", (course,))
        b.sql("INSERT INTO groups (course_id, name)"
              " SELECT %s, 'Group ' || g FROM generate_series(1, %s) g", (course, size // 10))
        # member k of the course goes to group k / 10; the first of each group joined this week
        b.sql("INSERT INTO group_members (group_id, person_id, joined_at)"
              " SELECT g.id, m.person_id, CASE WHEN m.k %% 10 = 0 THEN %s ELSE %s END"
              " FROM (SELECT person_id, row_number() OVER (ORDER BY person_id) - 1 AS k"
              "       FROM course_members WHERE course_id = %s AND roles = '{Learner}') m"
              " JOIN groups g ON g.course_id = %s AND g.name = 'Group ' || (m.k / 10 + 1)",
              (inside, before, course, course))
        for t in range(3):  # an old thread, then two new ones; 3 replies to each of two
            when = before if t == 0 else inside
            b.sql("INSERT INTO group_posts (group_id, author_id, message_id, subject, created_at)"
                  " SELECT g.id, (SELECT min(person_id) FROM group_members WHERE group_id = g.id),"
                  "   'bench-' || g.id || '-' || %s || '@x', 'Thread ' || %s || ' about week ' || g.id,"
                  "   %s FROM groups g WHERE g.course_id = %s", (t, t, when, course))
        b.sql("INSERT INTO group_posts (group_id, author_id, thread_id, message_id, subject,"
              " created_at)"
              " SELECT t.group_id, t.author_id, t.id, 'r-' || t.id || '-' || r || '@x',"
              "   'Re: ' || t.subject, %s"
              " FROM group_posts t JOIN groups g ON g.id = t.group_id"
              " CROSS JOIN generate_series(1, 3) r"
              " WHERE g.course_id = %s AND t.thread_id IS NULL AND t.message_id NOT LIKE '%%-2@x'",
              (inside, course))
    b.sql("ANALYZE")


def reset(b: Bench) -> None:
    b.sql("TRUNCATE outbox, outbox_attempts, links, digest_sent, digest_runs RESTART IDENTITY")
    b.sql("VACUUM ANALYZE outbox")


def send_now(b: Bench, config: Path, size: int):
    """
    Wall seconds, max RSS MiB and CPU seconds of `emaild digest --send-now`,
    and its output.
    """
    argv = [python(), "-m", "emaild", "--config", str(config), "digest", "--send-now",
            "--course", f"c{size}"]
    log = b.dir / f"digest-{size}.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    b.procs.append(proc)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - t0
    b.procs.remove(proc)
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{text[-3000:]}")
    return elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, text


def run_seconds(b: Bench, size: int) -> float:
    """The run itself, from the digest_runs row (start to finish)."""
    ((seconds,),) = b.sql(
        "SELECT extract(epoch FROM finished_at - started_at) FROM digest_runs r"
        " JOIN courses c ON c.id = r.course_id WHERE c.context_id = %s", (f"c{size}",))
    return float(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2000,5000,10000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with Bench("digest", keep=args.keep) as b:
        config = b.config()
        print(f"populating {max(sizes)} learners ...", flush=True)
        t0 = time.monotonic()
        populate(b, sizes)
        print(f"  {time.monotonic() - t0:.1f} s", flush=True)
        for size in sizes:
            samples = []
            for _ in range(args.repeat):
                reset(b)
                wait_quiet(max_wait=10)
                elapsed, rss, cpu, text = send_now(b, config, size)
                queued = b.sql("SELECT count(*), avg(length(body)) FROM outbox"
                               " WHERE template = 'digest'")[0]
                if queued[0] != size:
                    raise RuntimeError(f"{queued[0]} queued for {size} learners:\n{text}")
                run = run_seconds(b, size)
                print(f"  {size}: {elapsed:.1f} s wall, run {run:.1f} s, {rss:.0f} MiB, "
                      f"{cpu:.1f} s CPU", flush=True)
                samples.append((elapsed, run, rss, cpu, queued[1]))
            rows.append([size, f"{median(s[0] for s in samples):.1f}",
                         f"{median(s[1] for s in samples):.1f}",
                         f"{size / median(s[1] for s in samples):.0f}",
                         f"{median(s[3] for s in samples):.1f}",
                         f"{median(s[2] for s in samples):.0f}",
                         f"{median(s[4] for s in samples):.0f}"])
    print()
    print(table(["learners", "CLI wall s", "run s", "learners/s", "CLI CPU s", "max RSS MiB",
                 "msg bytes"], rows))
    big = max(rows, key=lambda r: r[0])
    rss = [float(r[5]) for r in rows]
    print(f"\n{big[0]} learners in {big[1]} s (CLI wall): target < 10 s "
          f"{'met' if float(big[1]) < 10 else 'MISSED'}; max RSS {min(rss):.0f}-{max(rss):.0f} MiB")


if __name__ == "__main__":
    reexec_in_venv()
    main()
