"""
(b) Throughput to Postfix's smtp-sink with no rate limit, beside
  - smtp-source -> smtp-sink (the ceiling: C, no database), and
  - plain smtplib over one connection, sendmail() per message (the baseline),
all with the same N messages of the same bytes (emaild's rendering of the
built-in `welcome` template; smtp-source sends one of them with -F).

Every sender runs --rounds times, interleaved (the machine is shared and
noisy); the table shows medians and every round's time.

emaild: N messages are queued first (and copied aside, so every run starts
from the same table), then `twistd -n emaild` starts with rate=100000,
burst=1000 and C connections.  The clock runs from the first claim being
committed (a row in state 'sending', polled every 5 ms) until no row is
queued or sending (polled every 20 ms; then every row must be 'sent'): every
state change durable in PostgreSQL (fsync on).  Daemon start-up is excluded.
CPU seconds of the daemon and of PostgreSQL (all its processes) are shown
for the same interval plus the daemon's start-up and shutdown.

    python bench/throughput.py [--quick] [--messages N] [--runs 1x1,1x2,1x4,1x8,2x4]
                               [--rounds 3] [--profile] [--variant LABEL=DIR ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (Bench, cpu_seconds, free_port, median, postfix_env,  # noqa: E402
                          postfix_tool, python, reexec_in_venv, table, twistd, wait_for,
                          wait_quiet, write_csv)
from bench.profile_summary import profile_summary  # noqa: E402

RECIPIENT = "student@sink.example.edu"


def start_sink(b: Bench, cpu: int | None = None) -> int:
    """smtp-sink on a free port; pinned to one CPU when `cpu` is given."""
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    b.spawn(pin + postfix_tool("smtp-sink") + user + [f"127.0.0.1:{port}", "1024"],
            log=b.dir / "smtp-sink.log", env=postfix_env())
    wait_for(lambda: _listening(port), 10, 0.05, "smtp-sink")
    return port


def _listening(port: int) -> bool:
    try:
        smtplib.SMTP("127.0.0.1", port, timeout=2).quit()
        return True
    except OSError:
        return False


def smtp_source(b: Bench, port: int, n: int, sessions: int, message: Path) -> dict:
    argv = postfix_tool("smtp-source") + [
        "-d", "-s", str(sessions), "-m", str(n), "-F", str(message),
        "-f", "bounces@bench.example.org", "-t", RECIPIENT, "-M", "bench.example.org",
        f"127.0.0.1:{port}"]
    t0 = time.monotonic()
    subprocess.run(argv, env=postfix_env(), check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    return {"sender": "smtp-source -d -F msg (C, no DB)", "conns": sessions, "seconds": seconds,
            "cpu": "-", "pg": "-", "cmd": " ".join(argv[1:])}


def smtplib_baseline(port: int, messages: list[tuple[str, bytes]], cpu: int | None = None) -> dict:
    """One connection, sendmail() per message; on CPU `cpu` only, when given."""
    cpus = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        t0 = time.monotonic()
        cpu0 = time.process_time()
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            for sender, data in messages:
                smtp.sendmail(sender, [RECIPIENT], data)
        seconds = time.monotonic() - t0
    finally:
        os.sched_setaffinity(0, cpus)
    name = ("smtplib, sendmail() per message" if cpu is None
            else "smtplib, same CPU as its smtp-sink")
    return {"sender": name, "conns": 1, "seconds": seconds,
            "cpu": time.process_time() - cpu0, "pg": "-"}


def restore(b: Bench) -> None:
    b.sql("TRUNCATE outbox, outbox_attempts, send_buckets, send_daily_usage")
    b.sql("INSERT INTO outbox SELECT * FROM bench_seed")
    b.sql("ANALYZE outbox")
    b.sql("CHECKPOINT")


def emaild(b: Bench, port: int, n: int, processes: int, connections: int,
           profile: bool = False, variant: tuple[str, str] | None = None) -> dict:
    """
    P daemons (sharing the database and the rate) with C connections each;
    `variant` (label, directory) runs the emaild code in that directory.
    """
    restore(b)
    busy = wait_quiet()
    name = f"{processes}x{connections}"
    configs = [b.config(f"throughput-{name}-{i}.toml", port=port, rate=100000.0, burst=1000.0,
                        connections=connections) for i in range(processes)]
    pg = b.postmaster_pid()
    pg_cpu0 = cpu_seconds(pg)
    logs = [b.dir / f"daemon-{name}-{i}.log" for i in range(processes)]
    env = {**os.environ, "PYTHONPATH": variant[1]} if variant else None
    daemons = [b.spawn(twistd() + ["-n", "--pidfile=", "emaild", "--config", str(config)],
                       log=log, cwd=b.dir, env=env) for config, log in zip(configs, logs)]

    def alive():
        for proc, log in zip(daemons, logs):
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        return True

    def claimed():
        return alive() and b.sql("SELECT 1 FROM outbox WHERE state = 'sending' LIMIT 1")

    def drained():
        return alive() and b.sql(
            "SELECT count(*) FROM outbox WHERE state IN ('queued', 'sending')")[0][0] == 0

    wait_for(claimed, 60, 0.005, "the first claim")
    t0 = time.monotonic()
    if profile:  # sample the (first) daemon from its first claim to the drained outbox
        spy = b.dir / f"py-spy-{name}.txt"
        prof = b.spawn([str(Path(python()).parent / "py-spy"), "record", "--pid",
                        str(daemons[0].pid), "--rate", "250", "--idle", "--format", "raw",
                        "-o", str(spy)], log=b.dir / "py-spy.log")
    wait_for(drained, n / 20 + 60, 0.02, "the outbox to drain")
    seconds = time.monotonic() - t0
    cpu = sum(cpu_seconds(d.pid) for d in daemons)
    if profile:
        os.kill(prof.pid, signal.SIGINT)
        prof.wait(30)
        print(profile_summary(spy), flush=True)
    for daemon in daemons:
        b.end(daemon)
    counts = b.counts()
    if counts["sent"] != n:
        raise RuntimeError(f"not everything was sent: {counts}")
    name = ("emaild (twistd + PostgreSQL)" if processes == 1
            else f"emaild, {processes} processes, one DB")
    return {"sender": name + (f" [{variant[0]}]" if variant else ""),
            "conns": processes * connections,
            "seconds": seconds, "cpu": cpu, "pg": cpu_seconds(pg) - pg_cpu0, "busy": busy}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2,000 messages, runs 1x1,1x4, one round")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--runs", default=None,
                        help="emaild runs as PROCESSESxCONNECTIONS, default 1x1,1x2,1x4,1x8,2x4")
    parser.add_argument("--rounds", type=int, default=None,
                        help="run every sender this many times, interleaved (default 3)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=DIR",
                        help="also run emaild from DIR, a copy of the repo with a change"
                             " (its emaild/ and twisted/), labelled LABEL")
    parser.add_argument("--profile", action="store_true",
                        help="sample the daemon with py-spy (pip install py-spy) and summarise")
    args = parser.parse_args()
    n = args.messages or (2000 if args.quick else 20000)
    rounds = args.rounds or (1 if args.quick else 3)
    runs = [tuple(map(int, r.split("x"))) for r in
            (args.runs or ("1x1,1x4" if args.quick else "1x1,1x2,1x4,1x8,2x4")).split(",")]
    results: dict[tuple, list[dict]] = {}
    with Bench("throughput", keep=args.keep) as b:
        port = start_sink(b)
        print(f"queueing {n} welcome messages ...", flush=True)
        seconds, _, _ = b.enqueue(b.config(port=port), write_csv(b.dir / "students.csv", n))
        print(f"  queued in {seconds:.1f}s", flush=True)
        b.sql("CREATE TABLE bench_seed AS SELECT * FROM outbox")
        messages = [(s, bytes(d)) for s, d in b.sql(
            "SELECT envelope_from, body FROM outbox ORDER BY id")]
        sample = b.dir / "message.eml"
        sample.write_bytes(messages[0][1])
        size = sum(len(d) for _, d in messages) / n

        pinned_port = start_sink(b, cpu=0)  # a second sink, for the pinned smtplib run
        jobs = {("smtp-source", 1): lambda: smtp_source(b, port, n, 1, sample),
                ("smtp-source", 4): lambda: smtp_source(b, port, n, 4, sample),
                ("smtplib", 1): lambda: smtplib_baseline(port, messages),
                ("smtplib-pinned", 1): lambda: smtplib_baseline(pinned_port, messages, cpu=0)}
        for processes, c in runs:
            for variant in [None] + [tuple(v.split("=", 1)) for v in args.variant]:
                jobs[("emaild", processes, c, variant[0] if variant else "")] = (
                    lambda p=processes, c=c, v=variant: emaild(b, port, n, p, c, args.profile, v))
        for r in range(rounds):
            for key, job in jobs.items():
                print(f"round {r + 1}/{rounds}: {' '.join(map(str, key))} ...", flush=True)
                busy = None if key[0] == "emaild" else wait_quiet()
                result = job()
                result.setdefault("busy", busy)
                results.setdefault(key, []).append(result)

    def med(key, field):
        values = [float(x[field]) for x in results[key] if x[field] != "-"]
        return median(values) if values else None

    def ratios(key, baseline):  # each round against the baseline's run of the same round
        return [b_["seconds"] / x["seconds"] for b_, x in zip(results[baseline], results[key])]

    def ratio(key, baseline=("smtplib", 1)):
        return median(ratios(key, baseline))

    rows = []
    for key, runs_ in results.items():
        secs = med(key, "seconds")
        spread = ratios(key, ("smtplib", 1))
        cpu, pg = med(key, "cpu"), med(key, "pg")
        rows.append([runs_[0]["sender"], runs_[0]["conns"], f"{secs:.2f}", f"{n / secs:.0f}",
                     f"{ratio(key):.2f}", f"{min(spread):.2f}-{max(spread):.2f}",
                     f"{ratio(key, ('smtplib-pinned', 1)):.2f}",
                     "-" if cpu is None else f"{cpu:.1f}", "-" if pg is None else f"{pg:.1f}",
                     ", ".join(f"{x['seconds']:.2f}" for x in runs_)])
    print(f"\n{n} messages of {size:.0f} bytes (mean) to smtp-sink on 127.0.0.1;"
          f" medians of {rounds} interleaved round(s)\n")
    print(table(["sender", "conns", "seconds", "msg/s", "x smtplib", "range", "x pinned",
                 "cpu s", "pg cpu s", "each round (s)"], rows))
    print("(x smtplib: median over rounds of smtplib's time / this sender's time in the same"
          " round, range: lowest and highest round; x pinned: the same against smtplib running"
          " on the CPU its own smtp-sink is pinned to, its best case)")
    print("(cpu s: the sender's CPU seconds, for emaild from start-up to the drained outbox;"
          " pg cpu s: all PostgreSQL processes, same interval)")
    busy = sorted(x["busy"] for xs in results.values() for x in xs)
    print(f"other load on the machine in the second before each measurement: median "
          f"{median(busy):.0%}, max {busy[-1]:.0%} (each waited up to 120 s for < 15%)")
    for label, prefix in (("one process", ("emaild", 1)), ("any emaild run", ("emaild",))):
        keys = [k for k in results if k[:len(prefix)] == prefix and not k[-1]]
        if keys:
            best = max(keys, key=ratio)
            r, p = ratio(best), ratio(best, ("smtplib-pinned", 1))
            print(f"best emaild ({label}): {best[1]} process(es) x {best[2]} connection(s): "
                  f"{r:.2f}x smtplib ({'met' if r >= 2 else 'MISSED'}), {p:.2f}x pinned smtplib "
                  f"({'met' if p >= 2 else 'MISSED'}); target 2x")
    print(f"smtp-source command: smtp-source {results[('smtp-source', 4)][0]['cmd']}")


if __name__ == "__main__":
    reexec_in_venv()
    main()
