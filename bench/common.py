"""
Pieces the benchmarks share: a temporary state directory with an embedded
PostgreSQL, the daemon as a subprocess, the test relay, enqueueing a CSV,
and polling the outbox.

Every process a benchmark starts is registered with its L{Bench} and ended
(by its own id) when the benchmark leaves its C{with} block, also on Ctrl-C
or SIGTERM.  The benchmarks only talk to 127.0.0.1.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
POSTFIX = REPO / ".tools" / "postfix"


def python() -> str:
    """The repo's .venv python when there is one, else the running one."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def reexec_in_venv() -> None:
    """Run the benchmark itself with python() (it imports emaild and psycopg2)."""
    target = python()
    if Path(target).absolute() != Path(sys.executable).absolute() \
            and not os.environ.get("BENCH_REEXEC_IN_VENV"):
        # not EMAILD_*: emaild reads that prefix as config overrides and
        # refuses names it does not know, which would fail every CLI call
        os.environ["BENCH_REEXEC_IN_VENV"] = "1"
        os.execv(target, [target] + sys.argv)


def twistd() -> list[str]:
    script = Path(python()).parent / "twistd"
    if script.exists():
        return [str(script)]
    return [python(), "-c", "import sys; sys.argv[0] = 'twistd';"
            " from twisted.scripts.twistd import run; run()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postfix_tool(name: str) -> list[str]:
    """argv prefix for smtp-source/smtp-sink from .tools (see scripts/tools.sh)."""
    binary = POSTFIX / "usr" / "sbin" / name
    if not binary.exists():
        subprocess.run(["bash", str(REPO / "scripts" / "tools.sh")], check=False)
    if not binary.exists():
        raise SystemExit(f"{binary} is missing; run scripts/tools.sh")
    return [str(binary)]


def postfix_env() -> dict:
    return {**os.environ, "LD_LIBRARY_PATH": str(POSTFIX / "usr" / "lib" / "postfix")}


def cpu_seconds(pid: int) -> float:
    """
    CPU time (user + system) of a process, its reaped children, and its
    live children (e.g. the postmaster: backends that exited are in its
    cutime/cstime, running ones are counted directly).
    """
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = sum(int(x) for x in fields[11:15]) / tick
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return total + sum(cpu_seconds(int(c)) for c in children)


def _cpu_busy_idle() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle, idle


def wait_quiet(threshold: float = 0.15, max_wait: float = 120.0) -> float:
    """
    The machine is shared: before a measurement, wait (up to max_wait
    seconds) until the CPUs were less than `threshold` busy over one second.
    Returns the last busy fraction seen (call it while our own processes idle).
    """
    deadline = time.monotonic() + max_wait
    while True:
        busy0, idle0 = _cpu_busy_idle()
        time.sleep(1.0)
        busy1, idle1 = _cpu_busy_idle()
        busy = (busy1 - busy0) / max(1, (busy1 - busy0) + (idle1 - idle0))
        if busy < threshold or time.monotonic() > deadline:
            if busy >= threshold:
                print(f"  (machine still {busy:.0%} busy with other work; measuring anyway)",
                      flush=True)
            return busy


def loadavg() -> float:
    """The 1-minute load average (runnable processes, whoever they belong to)."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def percentile(values, p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers, rows) -> str:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def write_csv(path: Path, n: int) -> Path:
    """n recipients: email, name and two context columns of the welcome template."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "name", "course", "cohort"])
        for i in range(n):
            w.writerow([f"student{i}@example.edu", f"Student Number {i}",
                        f"Networks {100 + i % 7}", f"2026-{i % 4 + 1}"])
    return path


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


_MIGRATE = """
import sys
from twisted.internet import defer, task
from emaild.db.database import Database
from emaild.db.migrations import migrate

async def main(reactor):
    db = Database(reactor, sys.argv[1], 1)
    await db.start()
    try:
        await migrate(db)
    finally:
        db.close()

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


class Bench:
    """
    with Bench("rate") as b: ...  -- a temp state dir with PostgreSQL running.
    """

    def __init__(self, name: str, keep: bool = False):
        self.name = name
        self.keep = keep
        self.procs: list[subprocess.Popen] = []
        self.dir = Path(tempfile.mkdtemp(prefix=f"emaild-bench-{name}-"))
        self.pg = None
        self.dsn = None
        self._conn = None
        #: statements (= transactions) the benchmark itself ran through sql()
        self.statements = 0
        #: config path -> the daemon's /healthz port
        self.http_ports: dict[Path, int] = {}

    def __enter__(self):
        signal.signal(signal.SIGTERM, _interrupt)  # clean up as on Ctrl-C
        try:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from emaild.db.embedded import EmbeddedPostgres
            self.pg = EmbeddedPostgres(self.dir / "postgres")
            self.dsn = self.pg.start()
            self.migrate()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            self.keep = True  # something went wrong: keep the logs
            self.diagnose()
        for proc in reversed(self.procs):
            self.end(proc)
        if self._conn is not None:
            self._conn.close()
        if self.pg is not None:
            try:
                self.pg.stop("immediate") if self.keep else self.pg.destroy()
            except Exception as e:
                print(f"stopping PostgreSQL: {e}", file=sys.stderr)
        if self.keep:
            print(f"state kept in {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        return False

    def diagnose(self) -> None:
        """Print the outbox counts and every live daemon's /healthz (after a failure)."""
        import urllib.request
        try:
            print(f"outbox: {self.counts()}", file=sys.stderr)
        except Exception as e:
            print(f"(outbox counts: {e})", file=sys.stderr)
        for path, port in self.http_ports.items():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3) as r:
                    print(f"{path.name}: {r.read().decode()}", file=sys.stderr)
            except Exception:
                pass

    # -- processes -----------------------------------------------------------
    def spawn(self, argv, log: Path | None = None, **kw) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL
        kw.setdefault("stdout", out)
        kw.setdefault("stderr", subprocess.STDOUT)
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def end(self, proc: subprocess.Popen, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL, to the process group this bench created."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        if proc in self.procs:
            self.procs.remove(proc)

    # -- configuration and the daemon -------------------------------------------
    def config(self, name: str = "bench.toml", smtp_port: int = 0, **relay) -> Path:
        """
        A config file in the state dir; keyword arguments go to [relay].
        The inbound SMTP server listens on 127.0.0.1:smtp_port (0: any port).
        """
        relay = {"transport": "smtp", "host": "127.0.0.1", "tls": "none", **relay}
        path = self.dir / name
        self.http_ports[path] = free_port()
        lines = [
            "[paths]", f'state_dir = "{self.dir}"',
            "[database]", f'url = "{self.dsn}"',
            "[http]", f'endpoint = "tcp:{self.http_ports[path]}:interface=127.0.0.1"',
            "[smtp]", 'relay_domain = "bench.example.org"',
            f'endpoint = "tcp:{smtp_port}:interface=127.0.0.1"',
            "[mail]", 'from_address = "course@bench.example.org"', 'from_name = "Bench Course"',
            "[relay]",
        ]
        for key, value in relay.items():
            lines.append(f"{key} = {value!r}".replace("'", '"'))
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_daemon(self, config: Path, log_name: str = "daemon.log",
                     timeout: float = 60.0) -> subprocess.Popen:
        log = self.dir / log_name
        start = log.stat().st_size if log.exists() else 0
        proc = self.spawn(twistd() + ["-n", "--pidfile=", "emaild", "--config", str(config)],
                          log=log, cwd=self.dir)

        def ready():
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({proc.returncode}); see {log}:\n"
                                   + log.read_text()[-3000:])
            with open(log, "rb") as f:
                f.seek(start)
                return b"emaild ready" in f.read()

        wait_for(ready, timeout, 0.05, "the daemon to be ready")
        return proc

    # -- the database ----------------------------------------------------------
    @property
    def conn(self):
        if self._conn is None:
            import psycopg2
            self._conn = psycopg2.connect(self.dsn)
            self._conn.autocommit = True
        return self._conn

    def sql(self, query: str, params=None) -> list[tuple]:
        self.statements += 1  # each its own transaction (autocommit)
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []

    def migrate(self) -> None:
        """Create the schema the way the daemon does (migrations are idempotent)."""
        subprocess.run([python(), "-c", _MIGRATE, self.dsn], check=True, cwd=REPO)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("queued", "sending", "sent", "failed", "suppressed"), 0)
        counts.update(self.sql("SELECT state, count(*) FROM outbox GROUP BY state"))
        return counts

    def terminal(self) -> int:
        c = self.counts()
        return c["sent"] + c["failed"] + c["suppressed"]

    def postmaster_pid(self) -> int:
        return int((self.pg.data_dir / "postmaster.pid").read_text().split()[0])

    def reset_outbox(self) -> None:
        self.sql("TRUNCATE outbox, outbox_attempts, send_buckets, send_daily_usage"
                 " RESTART IDENTITY")

    # -- enqueueing --------------------------------------------------------------
    def enqueue_argv(self, config: Path, csv_path: Path, template: str = "welcome") -> list[str]:
        return [python(), "-m", "emaild", "--config", str(config), "send",
                "--template", template, "--recipients", str(csv_path)]

    def enqueue(self, config: Path, csv_path: Path, template: str = "welcome"):
        """
        `emaild send --recipients CSV`; return (wall seconds, max RSS in MiB,
        CPU seconds) of that process.
        """
        argv = self.enqueue_argv(config, csv_path, template)
        log = self.dir / "enqueue.log"
        t0 = time.monotonic()
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        elapsed = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        self.procs.remove(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n"
                               + log.read_text()[-3000:])
        return elapsed, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


class Relay:
    """bench/throttling_relay.py as a subprocess; parses its accept log."""

    def __init__(self, bench: Bench, rate: float = 0.0, burst: float | None = None,
                 name: str = "relay"):
        self.log = bench.dir / f"{name}.log"
        argv = [python(), str(BENCH / "throttling_relay.py"), "--port", "0",
                "--rate", str(rate), "--log", str(self.log)]
        if burst is not None:
            argv += ["--burst", str(burst)]
        self.proc = bench.spawn(argv, stdout=subprocess.PIPE, stderr=open(
            bench.dir / f"{name}.err", "ab"), cwd=REPO)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise RuntimeError(f"relay did not start: {line!r}")
        self.port = int(line.split()[-1])

    def records(self) -> list[tuple[float, int, str, str]]:
        """(time, code, envelope sender, message id) per reply to a message."""
        out = []
        with open(self.log) as f:
            for line in f:
                t, code, sender, mid = line.split()
                out.append((float(t), int(code), sender, mid))
        return out

    def accepted_count(self) -> int:
        try:
            with open(self.log, "rb") as f:
                return sum(1 for line in f if b" 250 " in line)
        except FileNotFoundError:
            return 0
