"""
Login-link redirects under load: C{GET /email/<token>} of the real daemon
(twistd -n emaild, embedded PostgreSQL in a temp state dir) beside a bare
Klein route that returns a constant (a tiny Klein app in its own process, same
Python, same reactor, same Site with its access log), driven by wrk in the
same run.

Each request to the daemon picks a random token out of --links valid login
links (one per person), so every request is the real thing: decode the
token, check the link row, start a session (INSERT into web_sessions),
count the use (UPDATE links), answer 303 with Set-Cookie.  wrk keeps no
cookies, so no session is ever revoked.

Targets (from the issue, ratios from one run on a quiet machine), at 50
concurrent connections with the default pool: at least 0.6x the bare route's
requests/s, a p99 at most 2x the bare route's p99 in the same round, and at
most 0.5 ms of daemon CPU per click.  Before each round the bench waits (up
to --quiet-wait seconds) for the other work on the machine to settle, and
the report says "NOT a quiet machine" when it did not.

    python bench/links_bench.py [--duration 20] [--connections 50] [--rounds 2]
                                [--links 5000] [--pool-size 4]
                                [--profile | --cprofile | --trace]

Needs wrk (Debian: apt-get install -y wrk).  --profile records the daemon
with py-spy (pip install py-spy) during the last link run and prints where
the time goes; --cprofile does the same with cProfile (CPU time, and much
slower); --trace measures inside the daemon during the last links run: each
request's time from its last header to its last byte (what wrk's latency
adds to it is the wait to be read while the daemon is busy, and wrk), the cyclic GC's pauses per
generation, the click statements' sizes and durations, pool waits and reactor
turns, and PostgreSQL's side of the same seconds (bench/links_trace.py); each
stall (requests slower than 100 ms) is listed with what coincided with it.
"app ms/req" and "pg ms/req" are CPU time per request, the figures least
disturbed by other work on the machine.  The report ends with how many rounds
met each target: one round's p99 ratio says little (the bare route's own p99
moves between rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Bench,
    cpu_seconds,
    free_port,
    python,
    reexec_in_venv,
    table,
    wait_for,
    wait_quiet,
)
from bench.links_trace import TRACE_DAEMON, PostgresTrace, correlate  # noqa: E402

#: targets of the issue: links/bare req/s, links p99 / bare p99, daemon CPU ms per click
TARGET_RATIO, TARGET_P99_FACTOR, TARGET_APP_MS = 0.6, 2.0, 0.5
#: a round is "quiet" when the CPUs were less than this busy just before it
QUIET_BUSY = 0.15

SALT = "links bench salt"

BARE_APP = r"""
import sys
from klein import Klein
from twisted.internet import reactor
from twisted.python import log
from twisted.web.server import Site

log.startLogging(open(sys.argv[2], "a"), setStdout=False)
app = Klein()

@app.route("/bare", methods=["GET"])
def bare(request):
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return b"ok\n"

reactor.listenTCP(int(sys.argv[1]), Site(app.resource()), interface="127.0.0.1")
print("listening", flush=True)
reactor.run()
"""

# --cprofile: the same daemon under cProfile, which is enabled on SIGUSR1
# (sent just before the last links round) and written out on SIGUSR2 (just
# after it), so start-up, warm-up and the bare rounds are not in the profile.
CPROFILE_DAEMON = r"""
import cProfile, signal, sys, time
from twisted.scripts.twistd import run

# CPU time, not wall time: time the process spends descheduled (a loaded
# machine, PostgreSQL woken on the same core) is not charged to a function
profiler, output = cProfile.Profile(time.process_time), sys.argv[2]
signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())

def dump(*_):
    profiler.disable()
    profiler.dump_stats(output)

signal.signal(signal.SIGUSR2, dump)
sys.argv = ["twistd", "-n", "--pidfile=", "emaild", "--config", sys.argv[1]]
run()
"""

LUA = r"""
local paths = {}
for line in io.lines("%(paths)s") do paths[#paths + 1] = line end
local threads = 0

setup = function(thread)
  threads = threads + 1
  thread:set("seed", threads)
end

init = function(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
end

request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, ' ..
    '"p99_us": %%d, "max_us": %%d, "mean_us": %%.1f, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "status": %%d, "timeout": %%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, e.connect, e.read, e.write,
    e.status, e.timeout))
end
"""


def need_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed. On Debian/Ubuntu: apt-get update && "
                         "apt-get install -y wrk  (or build it from its sources).")
    return path


def write_config(b: Bench, port: int, pool_size: int) -> Path:
    path = b.dir / "links.toml"
    path.write_text("\n".join([
        "[paths]", f'state_dir = "{b.dir}"',
        "[database]", f'url = "{b.dsn}"', f"pool_size = {pool_size}",
        "[http]", f'endpoint = "tcp:{port}:interface=127.0.0.1"',
        f'public_url = "http://127.0.0.1:{port}"',
        "[smtp]", f'endpoint = "tcp:{free_port()}:interface=127.0.0.1"',
        'relay_domain = "bench.example.org"',
        "[mail]", 'from_address = "course@bench.example.org"',
        "[links]", f'salt = "{SALT}"',
    ]) + "\n")
    return path


def start_profiled_daemon(b: Bench, config: Path, script: str, output: Path) -> subprocess.Popen:
    log = b.dir / "daemon.log"
    proc = b.spawn([python(), "-c", script, str(config), str(output)], log=log, cwd=b.dir)

    def ready():
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited ({proc.returncode}):\n" + log.read_text()[-3000:])
        return b"emaild ready" in log.read_bytes()

    wait_for(ready, 60, 0.05, "the daemon to be ready")
    return proc


def make_links(b: Bench, n: int) -> list[str]:
    """n people, one valid login link each (to /home); their URL paths."""
    from emaild.links.tokens import TokenCodec, TokenParts, new_secret

    b.sql("INSERT INTO people (email, display_name)"
          " SELECT 'learner' || i || '@example.edu', 'Learner ' || i"
          " FROM generate_series(1, %s) i", (n,))
    people = [row[0] for row in b.sql("SELECT id FROM people ORDER BY id")]
    secrets_ = [new_secret() for _ in people]
    rows = b.sql(
        "INSERT INTO links (person_id, purpose, target, secret_hi, secret_lo, expires_at)"
        " SELECT p, 'login', '/home', h, l, now() + interval '30 days'"
        " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS v(p, h, l)"
        " RETURNING id, secret_hi, secret_lo",
        (people, [s[0] for s in secrets_], [s[1] for s in secrets_]))
    codec = TokenCodec(SALT)
    return [f"/email/{codec.encode(TokenParts(*row))}" for row in rows]


def check_link(port: int, path: str) -> None:
    """One request by hand: the daemon must answer 303 with a cookie."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(f"http://127.0.0.1:{port}{path}", timeout=10)
        raise SystemExit(f"{path}: expected a 303, got a 2xx")
    except urllib.error.HTTPError as e:
        if e.code != 303 or "emaild_session=" not in (e.headers.get("Set-Cookie") or ""):
            raise SystemExit(f"{path}: expected 303 with a session cookie, got {e.code}") from None


def run_wrk(wrk: str, lua: Path, url: str, duration: float, connections: int,
            threads: int) -> dict:
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency",
            "--timeout", "5s", "-s", str(lua), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["argv"] = " ".join(argv)
    return result


def measured(wrk, lua, url, pids, args) -> dict:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = run_wrk(wrk, lua, url, args.duration, args.connections, args.threads)
    for name, pid in pids.items():
        result[f"cpu_{name}"] = (cpu_seconds(pid) - before[name]) / (result["duration_us"] / 1e6)
    return result


def profile(b: Bench, pid: int, seconds: float) -> subprocess.Popen | None:
    spy = shutil.which("py-spy") or str(Path(python()).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy not found (pip install py-spy): no profile", file=sys.stderr)
        return None
    return b.spawn([spy, "record", "--pid", str(pid), "--rate", "250", "--duration",
                    str(int(seconds)), "--format", "raw", "--idle", "--nonblocking",
                    "--output", str(b.dir / "links.pyspy")], log=b.dir / "py-spy.log")


def _area(frames: list[str]) -> str:
    leaf = frames[-1]
    if leaf.startswith("EPollReactor.doPoll") or (
            leaf.startswith("untilConcludes") and len(frames) > 1
            and frames[-2].startswith("EPollReactor.doPoll")):
        return "idle: waiting in epoll (for PostgreSQL or clients)"
    joined = ";".join(frames)
    if "HTTPFactory.log" in joined or "twisted/logger/" in joined:
        return "access log and other logging"
    if "jinja2" in joined:
        return "templates"
    if "txpostgres" in joined or "psycopg2" in joined:
        return "database client (txpostgres/psycopg2)"
    if "hashids" in joined:
        return "token decode (hashids)"
    if "(emaild/" in leaf:
        return "emaild code itself"
    if "klein/" in joined or "werkzeug/" in joined:
        return "Klein/werkzeug routing and rendering"
    return "Twisted HTTP, TCP and Deferreds"


def summarise_profile(path: Path, top: int = 15) -> str:
    """Share of py-spy samples (raw format, --idle) per area and per innermost frame."""
    leaves: dict[str, int] = {}
    areas: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        area = _area(frames)
        areas[area] = areas.get(area, 0) + n
        if not area.startswith("idle"):
            leaves[frames[-1]] = leaves.get(frames[-1], 0) + n
    lines = ["share  area"] + [f"{100 * v / total:5.1f}%  {k}"
                               for k, v in sorted(areas.items(), key=lambda kv: -kv[1])]
    lines += ["", "share  innermost frame (busy samples)"] + [
        f"{100 * v / total:5.1f}%  {k}"
        for k, v in sorted(leaves.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines)


def summarise_trace(trace: dict, wrk_result: dict) -> str:
    """The --trace figures beside wrk's latency of the same run."""
    def points(d: dict, unit: str = " ms") -> str:
        return ", ".join(f"p{k} {v:g}{unit}" if k != "100" else f"max {v:g}{unit}"
                         for k, v in d.items())

    wrk_ms = {p: wrk_result[f"p{p}_us"] / 1000 for p in (50, 90, 99)}
    lines = [f"requests: {trace['requests']}, last header to last byte: "
             f"{points(trace['request_ms'])}",
             f"  (wrk saw p50 {wrk_ms[50]:.2f}, p90 {wrk_ms[90]:.2f}, p99 {wrk_ms[99]:.2f} ms: "
             "the rest: waiting to be read while the daemon is busy, and wrk)",
             f"click statements: {trace['statements']}, clicks each: "
             f"{points(trace['clicks_per_statement'], '')}",
             f"  duration: {points(trace['statement_ms'])}",
             f"pool: {trace['pool_waits']} calls, wait for a connection: "
             f"{points(trace['pool_wait_ms'])}",
             f"reactor turns: {trace['turns']}, each: {points(trace['turn_ms'])}"]
    for generation, g in trace["gc"].items():
        lines.append(f"GC generation {generation}: {g['collections']} collections, "
                     f"{g['total_ms']:g} ms in all, longest {g['max_ms']:g} ms")
    lines.append(f"GC: {trace['gc_frozen']} objects frozen at start-up, "
                 f"{trace['gc_tracked']} tracked at the end")
    return "\n".join(lines)


def summarise_rounds(met: dict[str, int], p99s: list[tuple[float, float]]) -> str:
    """
    How many rounds met each target, and the p99s round by round: a p99 of
    a few tens of ms moves between rounds by itself, for the bare route too,
    so one round's ratio says little; the fraction of rounds says more.
    """
    n = len(p99s)
    bare = [b for b, _ in p99s]
    lines = [f"targets met in {met['throughput']}/{n} rounds (throughput), {met['p99']}/{n} "
             f"(p99), {met['cpu']}/{n} (daemon CPU)",
             "p99 per round, bare / links ms: "
             + ", ".join(f"{b:.1f} / {link:.1f} ({link / b:.2f}x)" for b, link in p99s)]
    if n > 1 and min(bare) > 0:
        spread = max(bare) / min(bare)
        lines.append(f"the bare route's own p99 moved {min(bare):.1f}-{max(bare):.1f} ms between "
                     f"rounds ({spread:.2f}x)"
                     + (": its jitter alone moves the p99 ratio by that much" if spread > 1.2
                        else ""))
    return "\n".join(lines)


def main() -> None:
    reexec_in_venv()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--links", type=int, default=5000)
    parser.add_argument("--pool-size", type=int, default=4,
                        help="[database] pool_size of the daemon (emaild's default: 4)")
    parser.add_argument("--async-commit", action="store_true",
                        help="experiment: ALTER DATABASE ... SET synchronous_commit = off")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the daemon during the last links round")
    parser.add_argument("--cprofile", action="store_true",
                        help="cProfile the daemon during the last links round (slows it down)")
    parser.add_argument("--trace", action="store_true",
                        help="measure inside the daemon during the last links round (request "
                             "times, GC pauses, click statements)")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="seconds to wait for a quiet machine before each round")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    wrk = need_wrk()

    with Bench("links", keep=args.keep) as b:
        paths = make_links(b, args.links)
        (b.dir / "links.txt").write_text("\n".join(paths) + "\n")
        (b.dir / "bare.txt").write_text("/bare\n")
        links_lua, bare_lua = b.dir / "links.lua", b.dir / "bare.lua"
        links_lua.write_text(LUA % {"paths": b.dir / "links.txt"})
        bare_lua.write_text(LUA % {"paths": b.dir / "bare.txt"})

        if args.async_commit:
            b.sql("ALTER DATABASE emaild SET synchronous_commit = off")
        port = free_port()
        config = write_config(b, port, args.pool_size)
        wrapped = args.cprofile or args.trace
        wrapped_output = b.dir / ("links.cprofile" if args.cprofile else "links-trace.json")
        if wrapped:
            daemon = start_profiled_daemon(b, config, CPROFILE_DAEMON if args.cprofile
                                           else TRACE_DAEMON, wrapped_output)
        else:
            daemon = b.start_daemon(config, "daemon.log")
        bare_port = free_port()
        bare = b.spawn([python(), "-c", BARE_APP, str(bare_port), str(b.dir / "bare.log")],
                       stdout=subprocess.PIPE)
        if bare.stdout.readline().strip() != b"listening":
            raise SystemExit("the bare Klein app did not start")
        check_link(port, paths[0])

        pg = b.postmaster_pid()
        links_url = f"http://127.0.0.1:{port}/"
        bare_url = f"http://127.0.0.1:{bare_port}/"
        for lua, url in ((bare_lua, bare_url), (links_lua, links_url)):  # warm up
            run_wrk(wrk, lua, url, args.warmup, args.connections, args.threads)

        results = []
        pg_trace = PostgresTrace(b)
        spy = None
        busy = {}
        for round_ in range(1, args.rounds + 1):
            busy[round_] = wait_quiet(QUIET_BUSY, args.quiet_wait)
            r = measured(wrk, bare_lua, bare_url, {"app": bare.pid}, args)
            results.append(("bare Klein route", round_, r))
            last = round_ == args.rounds
            if args.profile and last:
                spy = profile(b, daemon.pid, args.duration)
            if args.trace and last:
                pg_trace.configure()
                pg_trace.start()
            if wrapped and last:
                os.kill(daemon.pid, signal.SIGUSR1)
            r = measured(wrk, links_lua, links_url, {"app": daemon.pid, "pg": pg}, args)
            if wrapped and last:
                os.kill(daemon.pid, signal.SIGUSR2)
                wait_for(wrapped_output.exists, 30, 0.1, "the profile")
            if args.trace and last:
                pg_trace.stop()
            results.append(("GET /email/<token>", round_, r))
        if spy is not None:
            spy.wait()
        b.end(bare)
        b.end(daemon)

        sessions = b.sql("SELECT count(*) FROM web_sessions")[0][0]
        uses = b.sql("SELECT sum(uses) FROM links")[0][0]
        log = (b.dir / "daemon.log").read_bytes().splitlines()
        access = sum(1 for line in log if b'"GET /email/' in line)
        tracebacks = sum(1 for line in log if b"Traceback" in line)

        rows = []
        for name, round_, r in results:
            rows.append([name, round_, f"{r['rps']:.0f}", f"{r['p50_us'] / 1000:.2f}",
                         f"{r['p90_us'] / 1000:.2f}", f"{r['p99_us'] / 1000:.2f}",
                         f"{r['max_us'] / 1000:.1f}",
                         r["status"] + r["connect"] + r["read"] + r["write"] + r["timeout"],
                         f"{100 * r['cpu_app']:.0f}%",
                         f"{100 * r['cpu_pg']:.0f}%" if "cpu_pg" in r else "-",
                         f"{1000 * r['cpu_app'] / r['rps']:.3f}",
                         f"{1000 * r['cpu_pg'] / r['rps']:.3f}" if "cpu_pg" in r else "-"])
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
              f"{platform.python_implementation()} {platform.python_version()}, "
              f"{platform.platform()}")
        print(f"wrk: {results[0][2]['argv']}")
        print(f"daemon: [database] pool_size = {args.pool_size}"
              + (", under cProfile (last links round)" if args.cprofile else "")
              + (", traced (last links round)" if args.trace else "")
              + (", EXPERIMENT: synchronous_commit = off" if args.async_commit else ""))
        print(f"links: {args.links} valid login links, one per person; "
              f"{args.rounds} rounds of {args.duration:g}s each, bare then links\n")
        print(table(["route", "round", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
                     "errors", "app CPU", "pg CPU", "app ms/req", "pg ms/req"], rows))
        met = {"throughput": 0, "p99": 0, "cpu": 0}
        p99s: list[tuple[float, float]] = []
        for round_ in range(1, args.rounds + 1):
            bare_r = next(r for n, k, r in results if k == round_ and n.startswith("bare"))
            link_r = next(r for n, k, r in results if k == round_ and n.startswith("GET"))
            ratio = link_r["rps"] / bare_r["rps"]
            p99_factor = link_r["p99_us"] / bare_r["p99_us"]
            app_ms = 1000 * link_r["cpu_app"] / link_r["rps"]

            def verdict(ok: bool) -> str:
                return "met" if ok else "MISSED"

            quiet = ("quiet machine" if busy[round_] < QUIET_BUSY else
                     f"NOT a quiet machine: {busy[round_]:.0%} busy before the round")
            met["throughput"] += ratio >= TARGET_RATIO
            met["p99"] += p99_factor <= TARGET_P99_FACTOR
            met["cpu"] += app_ms <= TARGET_APP_MS
            p99s.append((bare_r["p99_us"] / 1000, link_r["p99_us"] / 1000))
            print(f"round {round_} ({quiet}): links/bare throughput {ratio:.2f} (target >= "
                  f"{TARGET_RATIO}: {verdict(ratio >= TARGET_RATIO)}); links p99 "
                  f"{link_r['p99_us'] / 1000:.1f} ms = {p99_factor:.2f}x the bare p99 (target <= "
                  f"{TARGET_P99_FACTOR}x: {verdict(p99_factor <= TARGET_P99_FACTOR)}); daemon CPU "
                  f"{app_ms:.3f} ms/click (target <= {TARGET_APP_MS}: "
                  f"{verdict(app_ms <= TARGET_APP_MS)})")
        print(summarise_rounds(met, p99s))
        print(f"\nsessions created: {sessions}, link uses recorded: {uses}; daemon log: "
              f"{len(log)} lines, {access} of them access-log lines for /email/, "
              f"{tracebacks} tracebacks")
        if spy is not None and (b.dir / "links.pyspy").exists():
            print("\nwhere the daemon's time goes (py-spy, last links run):")
            print(summarise_profile(b.dir / "links.pyspy"))
        if args.trace and wrapped_output.exists():
            print("\ninside the daemon (last links run):")
            trace = json.loads(wrapped_output.read_text())
            print(summarise_trace(trace, results[-1][2]))
            print(correlate(trace, pg_trace))
        if args.cprofile and (b.dir / "links.cprofile").exists():
            import pstats

            print("\nwhere the daemon's time goes (cProfile, last links run, top by own time):")
            stats = pstats.Stats(str(b.dir / "links.cprofile"), stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
