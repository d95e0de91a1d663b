"""
(b) Throughput to Postfix's smtp-sink with no rate limit, on loopback and
through a delaying proxy (bench/delay_proxy.py) at real round-trip times,
beside
  - smtp-source -> smtp-sink (C, no database) with the same number of
    sessions as emaild's connections, and
  - plain smtplib over one connection, sendmail() per message (the baseline),
all with messages of the same bytes (emaild's rendering of the built-in
`welcome` template; smtp-source sends one of them with -F).

Every sender runs --rounds times, interleaved (the machine may be shared);
the tables show medians and every round's time.  Before each measurement
the script waits (up to 120 s) for the CPUs to be < 15% busy for a second
and prints the 1-minute load average; the summary says "NOT a quiet
machine" when any measurement did not get that.

emaild: N messages are queued first (and copied aside, so every run starts
from the same table), then `twistd -n emaild` starts with rate=100000,
burst=1000 and C connections.  The clock runs from the first claim being
committed (a row in state 'sending', polled every 5 ms) until no row is
queued or sending (polled every 20 ms; then every row must be 'sent'): every
state change durable in PostgreSQL (fsync on).  Daemon start-up is excluded.
CPU per message: the daemon's CPU seconds (/proc/<pid>/stat) and
PostgreSQL's (the postmaster and all its children), read at the first claim
and at the drained outbox (the same interval as the clock), each divided by
N; PostgreSQL's includes its background processes.

Through the proxy, emaild runs with the default connections (4) and its
limit is connections / RTT messages a second (one round trip per message per
connection, RFC 2920 pipelining); smtplib, which needs four round trips a
message, sends --baseline-messages of them (its rate is steady, fewer keep
the run short).  After every run through the proxy, 100 NOOP ping-pongs
over a raw socket measure the round trip the proxy really gave (the "proxy
RTT" column); the summary compares emaild with connections / that RTT too.
--trace has the proxy log every chunk and prints, per run, where each
connection's round trips went (bench/proxy_measure.py summarise_trace).

    python bench/throughput.py [--quick] [--messages N] [--runs 1x1,1x2,1x4,1x8,2x4]
                               [--rtt 0,1,10] [--baseline-messages 500]
                               [--rounds 3] [--profile] [--trace]
                               [--senders smtp-source,smtplib,emaild]
                               [--variant LABEL=DIR ...]
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

from bench.common import (  # noqa: E402
    BENCH,
    Bench,
    cpu_seconds,
    free_port,
    loadavg,
    median,
    postfix_env,
    postfix_tool,
    python,
    reexec_in_venv,
    table,
    twistd,
    wait_for,
    wait_quiet,
    write_csv,
)
from bench.profile_summary import profile_summary  # noqa: E402
from bench.proxy_measure import ping_pong, summarise_trace  # noqa: E402

RECIPIENT = "student@sink.example.edu"
#: seconds each measurement waits for a quiet machine (--max-wait)
QUIET_WAIT = 120.0


def start_sink(b: Bench, cpu: int | None = None) -> int:
    """smtp-sink on a free port; pinned to one CPU when `cpu` is given."""
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    b.spawn(pin + postfix_tool("smtp-sink") + user + [f"127.0.0.1:{port}", "1024"],
            log=b.dir / "smtp-sink.log", env=postfix_env())
    wait_for(lambda: _listening(port), 10, 0.05, "smtp-sink")
    return port


def start_proxy(b: Bench, sink_port: int, rtt_ms: float, trace: Path | None = None) -> int:
    """bench/delay_proxy.py in front of the sink: every byte RTT/2 late each way."""
    port = free_port()
    b.spawn([python(), str(BENCH / "delay_proxy.py"), "--listen", str(port),
             "--target", f"127.0.0.1:{sink_port}", "--rtt-ms", str(rtt_ms)]
            + (["--trace", str(trace)] if trace else []),
            log=b.dir / f"delay-proxy-{rtt_ms:g}ms.log")
    wait_for(lambda: _listening(port), 10, 0.05, f"the {rtt_ms:g} ms proxy")
    return port


def proxy_rtt(port: int) -> float:
    """
    The round trip the proxy really gives (seconds): the median of 100 NOOP
    ping-pongs through it to the sink, over a raw socket (no SMTP library).
    """
    return median(ping_pong(port, 100))


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
            "n": n, "cpu": "-", "pg": "-", "cmd": " ".join(argv[1:])}


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
    return {"sender": name, "conns": 1, "seconds": seconds, "n": len(messages),
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
    busy = wait_quiet(max_wait=QUIET_WAIT)
    name = f"{processes}x{connections}"
    configs = [b.config(f"throughput-{name}-{i}.toml", port=port, rate=100000.0, burst=1000.0,
                        connections=connections) for i in range(processes)]
    pg = b.postmaster_pid()
    xacts0 = _transactions(b)
    own_backend = b.sql("SELECT pg_backend_pid()")[0][0]
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
        # two probes of the partial indexes, not a scan of the whole table
        return alive() and not b.sql(
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE state = 'queued')"
            " OR EXISTS (SELECT 1 FROM outbox WHERE state = 'sending')")[0][0]

    wait_for(claimed, 60, 0.005, "the first claim")
    t0 = time.monotonic()
    # CPU from the first claim to the drained outbox, like the clock: the
    # daemon's start-up (imports, migrations check) is not per-message work
    cpu0 = sum(cpu_seconds(d.pid) for d in daemons)
    pg_cpu0 = cpu_seconds(pg) - cpu_seconds(own_backend)
    if profile:  # sample the (first) daemon from its first claim to the drained outbox
        spy = b.dir / f"py-spy-{name}.txt"
        prof = b.spawn([str(Path(python()).parent / "py-spy"), "record", "--pid",
                        str(daemons[0].pid), "--rate", "250", "--idle", "--format", "raw",
                        "-o", str(spy)], log=b.dir / "py-spy.log")
    wait_for(drained, n / 20 + 60, 0.02, "the outbox to drain")
    seconds = time.monotonic() - t0
    cpu = sum(cpu_seconds(d.pid) for d in daemons) - cpu0
    # PostgreSQL's CPU less that of the backend serving this script's polls
    pg_cpu = cpu_seconds(pg) - cpu_seconds(own_backend) - pg_cpu0
    if profile:
        os.kill(prof.pid, signal.SIGINT)
        prof.wait(30)
        print(profile_summary(spy), flush=True)
    for daemon in daemons:
        b.end(daemon)
    time.sleep(0.5)  # exited backends' statistics reach pg_stat_database
    xacts = _transactions(b) - xacts0
    counts = b.counts()
    if counts["sent"] != n:
        raise RuntimeError(f"not everything was sent: {counts}")
    name = ("emaild (twistd + PostgreSQL)" if processes == 1
            else f"emaild, {processes} processes, one DB")
    return {"sender": name + (f" [{variant[0]}]" if variant else ""),
            "conns": processes * connections, "n": n,
            "seconds": seconds, "cpu": cpu, "pg": pg_cpu, "busy": busy, "xacts": xacts}


def _transactions(b: Bench) -> int:
    """
    Transactions committed in the database so far (its statistics), less
    the benchmark's own (its polls of the outbox, these queries).
    """
    b.sql("SELECT pg_stat_clear_snapshot()")
    rows = b.sql("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    return rows[0][0] - b.statements


DEFAULT_CONNECTIONS = 4  # [relay] connections when not configured


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2,000 messages, loopback runs 1x1,1x4, one round")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--runs", default=None,
                        help="loopback emaild runs as PROCESSESxCONNECTIONS,"
                             " default 1x1,1x2,1x4,1x8,2x4")
    parser.add_argument("--rtt", default="0,1,10",
                        help="round-trip times in ms, 0 = straight to the sink (default 0,1,10)")
    parser.add_argument("--baseline-messages", type=int, default=500,
                        help="messages smtplib sends through the proxy (default 500)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="run every sender this many times, interleaved (default 3)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=DIR",
                        help="also run emaild from DIR, a copy of the repo with a change"
                             " (its emaild/ and twisted/), labelled LABEL")
    parser.add_argument("--profile", action="store_true",
                        help="sample the daemon with py-spy (pip install py-spy) and summarise")
    parser.add_argument("--senders", default="smtp-source,smtplib,emaild",
                        help="which senders run (default smtp-source,smtplib,emaild; x smtplib"
                             " needs smtplib)")
    parser.add_argument("--trace", action="store_true",
                        help="the proxies trace every chunk; after each run through one,"
                             " say where each connection's round trips went")
    parser.add_argument("--max-wait", type=float, default=120.0,
                        help="seconds each measurement waits for a quiet machine (default 120)")
    args = parser.parse_args()
    global QUIET_WAIT
    QUIET_WAIT = args.max_wait
    n = args.messages or (2000 if args.quick else 20000)
    rounds = args.rounds or (1 if args.quick else 3)
    runs = [tuple(map(int, r.split("x"))) for r in
            (args.runs or ("1x1,1x4" if args.quick else "1x1,1x2,1x4,1x8,2x4")).split(",")]
    rtts = [float(x) for x in args.rtt.split(",")]
    variants = [None] + [tuple(v.split("=", 1)) for v in args.variant]
    print(f"load average at start: {loadavg()}", flush=True)
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

        jobs = {}
        #: RTT -> (the proxy's port, its trace file or None)
        proxies: dict[float, tuple[int, Path | None]] = {}
        for rtt in rtts:
            if rtt == 0:
                pinned_port = start_sink(b, cpu=0)  # a second sink, for the pinned smtplib run
                jobs[(0, "smtp-source", 1)] = lambda: smtp_source(b, port, n, 1, sample)
                jobs[(0, "smtp-source", 4)] = lambda: smtp_source(b, port, n, 4, sample)
                jobs[(0, "smtplib", 1)] = lambda: smtplib_baseline(port, messages)
                jobs[(0, "smtplib-pinned", 1)] = (
                    lambda pinned_port=pinned_port: smtplib_baseline(pinned_port, messages, cpu=0))
                for processes, c in runs:
                    for v in variants:
                        jobs[(0, "emaild", processes, c, v[0] if v else "")] = (
                            lambda p=processes, c=c, v=v: emaild(b, port, n, p, c,
                                                                 args.profile, v))
                continue
            trace = b.dir / f"delay-proxy-{rtt:g}ms.trace" if args.trace else None
            proxied = start_proxy(b, port, rtt, trace)
            proxies[rtt] = (proxied, trace)
            c = DEFAULT_CONNECTIONS
            few = messages[:args.baseline_messages]
            jobs[(rtt, "smtp-source", c)] = (
                lambda pp=proxied, c=c: smtp_source(b, pp, n, c, sample))
            jobs[(rtt, "smtplib", 1)] = lambda pp=proxied, few=few: smtplib_baseline(pp, few)
            for v in variants:
                jobs[(rtt, "emaild", 1, c, v[0] if v else "")] = (
                    lambda pp=proxied, c=c, v=v: emaild(b, pp, n, 1, c, args.profile, v))
        senders = set(args.senders.split(","))
        jobs = {key: job for key, job in jobs.items()
                if key[1].removesuffix("-pinned") in senders}
        for r in range(rounds):
            for key, job in jobs.items():
                print(f"round {r + 1}/{rounds}: {key[0]:g} ms:"
                      f" {' '.join(map(str, key[1:]))} ...", flush=True)
                busy = None if key[1] == "emaild" else wait_quiet(max_wait=QUIET_WAIT)
                proxied, trace = proxies.get(key[0], (None, None))
                if trace is not None:
                    trace.write_bytes(b"")  # the proxy appends: this job's lines only
                result = job()
                result.setdefault("busy", busy)
                result["load"] = loadavg()
                if proxied is not None:
                    # after the job, not before: the daemon's own wait for
                    # a quiet machine comes first
                    result["rtt"] = proxy_rtt(proxied)
                if trace is not None:
                    time.sleep(0.7)  # the proxy writes its trace every 0.5 s
                    print(f"  proxy trace: {summarise_trace(trace, key[0] / 1000)}", flush=True)
                results.setdefault(key, []).append(result)

    def med(key, field):
        values = [float(x[field]) for x in results[key] if x[field] != "-"]
        return median(values) if values else None

    def rate(x):
        return x["n"] / x["seconds"]

    def ratios(key, baseline):  # each round against the baseline's run of the same round
        if baseline not in results:  # not run (--senders)
            return [float("nan")]
        return [rate(x) / rate(b_) for b_, x in zip(results[baseline], results[key])]

    def ratio(key, baseline):
        return median(ratios(key, baseline)) if baseline in results else float("nan")

    def per_message_ms(key, field):
        values = [float(x[field]) / x["n"] * 1000 for x in results[key] if x[field] != "-"]
        return f"{median(values):.3f}" if values else "-"

    print(f"\nmessages of {size:.0f} bytes (mean) to smtp-sink on 127.0.0.1, {n} per run"
          f" (smtplib through the proxy: {args.baseline_messages});"
          f" medians of {rounds} interleaved round(s)")
    verdicts = []
    for rtt in rtts:
        keys = [k for k in results if k[0] == rtt]
        baseline = (rtt, "smtplib", 1)
        rows = []
        for key in keys:
            runs_ = results[key]
            rates = [rate(x) for x in runs_]
            spread = ratios(key, baseline)
            limit = (f"{median(rates) / (runs_[0]['conns'] * 1000 / rtt):.0%}"
                     if rtt else "-")
            real = (f"{median([x['rtt'] for x in runs_]) * 1000:.2f}"
                    if "rtt" in runs_[0] else "-")
            rows.append([runs_[0]["sender"], runs_[0]["conns"], f"{median(rates):.0f}",
                         f"{ratio(key, baseline):.2f}", f"{min(spread):.2f}-{max(spread):.2f}",
                         limit, real, per_message_ms(key, "cpu"), per_message_ms(key, "pg"),
                         (f"{median([x['xacts'] / x['n'] for x in runs_]):.3f}"
                          if "xacts" in runs_[0] else "-"),
                         ", ".join(f"{x['seconds']:.2f}" for x in runs_)])
        where = "straight to the sink" if rtt == 0 else f"through the proxy, {rtt:g} ms RTT"
        print(f"\n{where}\n")
        print(table(["sender", "conns", "msg/s", "x smtplib", "range", "of conns/RTT",
                     "proxy RTT ms", "cpu ms/msg", "pg ms/msg", "pg xact/msg", "each round (s)"], rows))
        emailds = [k for k in keys if k[1] == "emaild" and k[2] == 1 and not k[-1]]
        if not emailds:
            continue
        best = max(emailds, key=lambda k: ratio(k, baseline))
        r = ratio(best, baseline)
        if rtt == 0:
            cpu = median([(x["cpu"] + x["pg"]) / x["n"] * 1000 for x in results[best]])
            verdicts.append(f"loopback: best one-process emaild ({best[3]} connections) "
                            f"{r:.2f}x smtplib ({'met' if r >= 1.5 else 'MISSED'}, target 1.5x);"
                            f" daemon + PostgreSQL CPU {cpu:.3f} ms/msg"
                            f" ({'met' if cpu <= 0.2 else 'MISSED'}, target 0.2)")
        else:
            emaild_rate = median([rate(x) for x in results[best]])
            share = emaild_rate / (best[3] * 1000 / rtt)
            # the round trip the proxy really gave (NOOP ping-pong after
            # each run): what a pipelining client's limit is measured against
            real = median([x["rtt"] for xs in (results[k] for k in keys) for x in xs])
            verdicts.append(f"{rtt:g} ms: emaild ({best[3]} connections) {share:.0%} of"
                            f" connections/RTT ({'met' if share >= 0.8 else 'MISSED'}, target"
                            f" 80% at 10 ms), {r:.1f}x smtplib"
                            f" ({'met' if r >= 12 else 'MISSED'}, target 12x at 10 ms);"
                            f" {emaild_rate * real / best[3]:.0%} of connections / the round"
                            f" trip the proxy measured ({real * 1000:.2f} ms, NOOP ping-pong)")
    print("\n(x smtplib: median over rounds of this sender's msg/s / smtplib's in the same"
          " round and RTT; range: lowest and highest round; of conns/RTT: msg/s against one"
          " message per round trip per connection; proxy RTT: the median of 100 NOOP"
          " ping-pongs through the proxy to the sink after each run; cpu/pg ms/msg: the sender's CPU, for"
          " emaild from its first claim to the drained outbox, and all of PostgreSQL's over"
          " the same interval, per message;"
          " pg xact/msg: the daemon's transactions per message, from pg_stat_database less the"
          " benchmark's own polls)")
    busy = sorted(x["busy"] for xs in results.values() for x in xs)
    loads = [x["load"] for xs in results.values() for x in xs]
    quiet = busy[-1] < 0.15
    print(f"other load before each measurement: median {median(busy):.0%}, max {busy[-1]:.0%}"
          f" (each waited up to {QUIET_WAIT:g} s for < 15%); 1-minute load average after each run:"
          f" {min(loads):.2f}-{max(loads):.2f}")
    if not quiet:
        print("NOT a quiet machine: at least one measurement started while other work was"
              " running; the figures say more about the machine than about emaild")
    for verdict in verdicts:
        print(verdict + ("" if quiet else " [not a quiet machine]"))
    for key, xs in results.items():
        if key[1] == "smtp-source":
            print(f"smtp-source command ({key[0]:g} ms): smtp-source {xs[0]['cmd']}")


if __name__ == "__main__":
    reexec_in_venv()
    main()
