"""
What `bench/links_bench.py --trace` records during the last links run, on
both sides of the click statement, with wall-clock times so that each
stall can be matched with what was happening at that moment.

Inside the daemon (public APIs where there are any; the pool wait needs
txpostgres' semaphore):
  - each request's time from its last header to its last byte, and the
    start of every request slower than SLOW_MS;
  - each click statement (size, duration, start), and the wait for a free
    pooled connection of every database call;
  - the cyclic GC's pauses per generation (C{gc.callbacks});
  - reactor turns: the time between two returns to epoll (work done in one
    turn, plus any time the process was not scheduled).

Inside PostgreSQL (settings reloaded for the run only: C{ALTER SYSTEM},
undone afterwards): statements slower than SLOW_MS, checkpoints,
autovacuum/autoanalyze runs and lock waits in its log; the backends' wait
events sampled every SAMPLE_S from pg_stat_activity; WAL and checkpointer
counters (pg_stat_wal, pg_stat_io for WAL, pg_stat_checkpointer,
pg_stat_bgwriter) before and after.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime
from pathlib import Path

#: a request, statement or reactor turn slower than this is listed with its time
SLOW_MS = 100.0
#: pg_stat_activity is sampled this often
SAMPLE_S = 0.005

TRACE_DAEMON = r"""
import gc, json, signal, sys, time
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor
from twisted.scripts.twistd import run
from twisted.web import http
from txpostgres import txpostgres
from emaild.links.store import LinkStore

SLOW = %(slow_ms)f / 1000
clock, wall, output = time.perf_counter, time.time, sys.argv[2]
on = [False]
requests, slow_requests, statements, pool_waits = [], [], [], []
pauses = {0: [], 1: [], 2: []}
turns, slow_turns = [], []
received, finish = http.Request.requestReceived, http.Request.finish

def requestReceived(self, *args):
    self.trace_start = clock()
    return received(self, *args)

def finished(self):
    if on[0] and hasattr(self, "trace_start"):
        took = clock() - self.trace_start
        requests.append(took)
        if took > SLOW:
            slow_requests.append((wall() - took, took))
    return finish(self)

http.Request.requestReceived, http.Request.finish = requestReceived, finished
use_many = LinkStore.use_many

async def traced_use_many(self, clicks, *args, **kwargs):
    start, at = clock(), wall()
    try:
        return await use_many(self, clicks, *args, **kwargs)
    finally:
        if on[0]:
            statements.append((at, len(clicks), clock() - start))

LinkStore.use_many = traced_use_many

# the wait for a pooled connection: txpostgres runs every call inside a
# DeferredSemaphore as large as the pool (its _semaphore: no public API)
def waited(name):
    inner = "_" + name
    def call(self, *args, **kwargs):
        asked = clock()
        def run_now(*a, **k):
            if on[0]:
                pool_waits.append((wall(), clock() - asked))
            return getattr(self, inner)(*a, **k)
        return self._semaphore.run(run_now, *args, **kwargs)
    return call

for name in ("runQuery", "runOperation", "runInteraction"):
    setattr(txpostgres.ConnectionPool, name, waited(name))

gc_start = [0.0]

def gc_callback(phase, info):
    if phase == "start":
        gc_start[0] = clock()
    elif on[0]:
        pauses[info["generation"]].append((wall(), clock() - gc_start[0]))

gc.callbacks.append(gc_callback)

# a reactor turn: from one return out of epoll to the next call into it
# (with the CPU time the process got meanwhile: far less than the turn's
# length means the process was waiting for a CPU, not working)
poll = type(reactor).doPoll
left_poll = [None, 0.0]

def doPoll(self, timeout):
    if on[0] and left_poll[0] is not None:
        took = clock() - left_poll[0]
        turns.append(took)
        if took > SLOW / 5:
            slow_turns.append((wall() - took, took, time.process_time() - left_poll[1]))
    try:
        return poll(self, timeout)
    finally:
        left_poll[0], left_poll[1] = clock(), time.process_time()

type(reactor).doPoll = type(reactor).doIteration = doPoll

def start(*_):
    on[0] = True

def ms(values, points=(50, 90, 99, 100)):
    values = sorted(values)
    return {p: round(1000 * values[min(len(values) - 1, len(values) * p // 100)], 2)
            for p in points} if values else {}

def dump(*_):
    on[0] = False
    with open(output, "w") as f:
        json.dump({
            "requests": len(requests), "request_ms": ms(requests),
            "slow_requests": slow_requests,
            "statements": len(statements),
            "clicks_per_statement": {p: v / 1000 for p, v in
                                     ms([n for _, n, _ in statements], (10, 50, 90, 100)).items()},
            "statement_ms": ms([t for _, _, t in statements]),
            "slow_statements": [s for s in statements if s[2] > SLOW],
            "pool_waits": len(pool_waits), "pool_wait_ms": ms([w for _, w in pool_waits]),
            "slow_pool_waits": [w for w in pool_waits if w[1] > SLOW / 5],
            "turns": len(turns), "turn_ms": ms(turns), "slow_turns": slow_turns,
            "gc": {g: {"collections": len(v), "total_ms": round(1000 * sum(t for _, t in v), 1),
                       "max_ms": round(1000 * max((t for _, t in v), default=0), 2),
                       "slow": [p for p in v if p[1] > SLOW / 10]}
                   for g, v in pauses.items()},
            "gc_frozen": gc.get_freeze_count(), "gc_tracked": len(gc.get_objects())}, f)

signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, dump)
sys.argv = ["twistd", "-n", "--pidfile=", "emaild", "--config", sys.argv[1]]
run()
""" % {"slow_ms": SLOW_MS}

#: reloadable settings for the traced run (undone by ALTER SYSTEM RESET ALL)
PG_TRACE_SETTINGS = {
    "log_min_duration_statement": f"{SLOW_MS / 2:g}ms",
    "log_checkpoints": "on",
    "log_autovacuum_min_duration": "0",
    "log_lock_waits": "on",
    "track_wal_io_timing": "on",
    "track_io_timing": "on",
}

_COUNTERS = {
    "wal": "SELECT wal_records, wal_fpi, wal_bytes::bigint, wal_buffers_full FROM pg_stat_wal",
    # PostgreSQL 18: context 'init' is the creation of new WAL segment files
    **{f"wal_io_{context}": "SELECT coalesce(sum(writes), 0), coalesce(sum(write_time), 0)::float8,"
       " coalesce(sum(fsyncs), 0), coalesce(sum(fsync_time), 0)::float8"
       f" FROM pg_stat_io WHERE object = 'wal' AND context = '{context}'"
       for context in ("normal", "init")},
    "checkpointer": "SELECT num_timed, num_requested, write_time, sync_time,"
                    " buffers_written FROM pg_stat_checkpointer",
    "bgwriter": "SELECT buffers_clean, maxwritten_clean FROM pg_stat_bgwriter",
}
_COUNTER_NAMES = {
    "wal": ("records", "full-page images", "bytes", "buffers full"),
    "wal_io_normal": ("writes", "write ms", "fsyncs", "fsync ms"),
    "wal_io_init": ("writes", "write ms", "fsyncs", "fsync ms"),
    "checkpointer": ("timed", "requested", "write ms", "sync ms", "buffers"),
    "bgwriter": ("buffers cleaned", "stopped at max"),
}


class PostgresTrace:
    """
    PostgreSQL's view of the traced run: L{start} before it, L{stop} after.
    """

    def __init__(self, bench):
        self.bench = bench
        self.samples: list[tuple[float, int, str, str]] = []
        #: (first seen, WAL segment file) each time inserts moved to a new segment
        self.segments: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.log_from = 0

    def configure(self) -> None:
        for name, value in PG_TRACE_SETTINGS.items():
            self.bench.sql(f"ALTER SYSTEM SET {name} = '{value}'")
        self.bench.sql("SELECT pg_reload_conf()")

    def counters(self) -> dict[str, tuple]:
        out = {}
        for name, query in _COUNTERS.items():
            try:
                out[name] = tuple(float(x) for x in self.bench.sql(query)[0])
            except Exception as e:  # another PostgreSQL version: say so, go on
                self.bench.conn.rollback() if not self.bench.conn.autocommit else None
                out[name] = (f"unavailable: {e}".splitlines()[0],)
        return out

    def start(self) -> None:
        self.log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.before = self.counters()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.after = self.counters()
        self.bench.sql("ALTER SYSTEM RESET ALL")
        self.bench.sql("SELECT pg_reload_conf()")

    @property
    def log_path(self) -> Path:
        return self.bench.pg.data_dir / "server.log"

    def _sample(self) -> None:
        import psycopg2

        conn = psycopg2.connect(self.bench.dsn)
        conn.autocommit = True
        me = conn.get_backend_pid()
        with conn.cursor() as cur:
            while not self._stop.is_set():
                cur.execute(
                    "SELECT extract(epoch FROM clock_timestamp())::float8, pid, backend_type,"
                    " coalesce(wait_event_type, 'CPU') || ':' || coalesce(wait_event, '-')"
                    " FROM pg_stat_activity WHERE pid <> %s AND (state IS NULL OR state NOT IN"
                    " ('idle')) AND coalesce(wait_event, '') NOT IN"
                    " ('ClientRead', 'WalWriterMain', 'CheckpointerMain', 'BgWriterMain',"
                    "  'BgWriterHibernate', 'AutovacuumMain', 'LogicalLauncherMain',"
                    "  'WalSummarizerWal', 'IoWorkerMain')", (me,))
                self.samples.extend(cur.fetchall())
                cur.execute("SELECT extract(epoch FROM clock_timestamp())::float8,"
                            " pg_walfile_name(pg_current_wal_insert_lsn())")
                at, segment = cur.fetchone()
                if not self.segments or self.segments[-1][1] != segment:
                    self.segments.append((at, segment))
                time.sleep(SAMPLE_S)
        conn.close()

    def log_events(self) -> list[tuple[float, str]]:
        """(time, line) of the server log lines written during the run."""
        events = []
        with open(self.log_path, "rb") as f:
            f.seek(self.log_from)
            text = f.read().decode("utf-8", "replace")
        stamp = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) (\w+)")
        for line in text.splitlines():
            m = stamp.match(line)
            if m is None:
                continue
            when = datetime.strptime(m.group(1) + " +0000", "%Y-%m-%d %H:%M:%S.%f %z")
            events.append((when.timestamp(), line[m.end():].strip()[:110]))
        return events

    def counter_deltas(self) -> list[str]:
        lines = []
        for name, names in _COUNTER_NAMES.items():
            before, after = self.before.get(name), self.after.get(name)
            if not before or isinstance(before[0], str) or isinstance(after[0], str):
                lines.append(f"  {name}: {(after or before or ('?',))[0]}")
                continue
            lines.append(f"  {name}: " + ", ".join(
                f"{label} {b - a:g}" for label, a, b in zip(names, before, after)))
        return lines


def _hms(at: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(at)) + f".{int(1000 * (at % 1)):03d}"


def _window_summary(start: float, end: float, trace: dict, pg: PostgresTrace,
                    events: list[tuple[float, str]]) -> list[str]:
    """What else happened between start and end (seconds since the epoch)."""
    out = []
    waits: dict[str, int] = {}
    for at, _pid, kind, wait in pg.samples:
        if start <= at <= end:
            key = f"{kind} {wait}"
            waits[key] = waits.get(key, 0) + 1
    if waits:
        out.append("    pg wait samples: " + ", ".join(
            f"{k} x{v}" for k, v in sorted(waits.items(), key=lambda kv: -kv[1])[:6]))
    for at, took, cpu in trace["slow_turns"]:
        if at <= end and at + took >= start:
            out.append(f"    reactor turn {1000 * took:.0f} ms ({1000 * cpu:.0f} ms of CPU) "
                       f"at +{at - start:.3f} s")
    for generation, g in trace["gc"].items():
        for at, took in g["slow"]:
            if at <= end and at + took >= start:
                out.append(f"    GC gen {generation} {1000 * took:.1f} ms")
    for at, took in trace["slow_pool_waits"]:
        if at - took <= end and at >= start:
            out.append(f"    pool wait {1000 * took:.0f} ms")
    for at, line in events:
        if start - 0.05 <= at <= end + 0.05:
            out.append(f"    pg log: {line}")
    for at, segment in pg.segments[1:]:
        if start - 0.05 <= at <= end + 0.05:
            out.append(f"    WAL inserts moved to a new segment ({segment}) at +{at - start:.3f} s")
    return out


def stall_windows(slow_requests) -> list[tuple[float, float, int]]:
    """Slow requests grouped when their times overlap: (start, end, requests)."""
    windows: list[list] = []
    for at, took in sorted(slow_requests):
        if windows and at <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], at + took)
            windows[-1][2] += 1
        else:
            windows.append([at, at + took, 1])
    return [tuple(w) for w in windows]


def correlate(trace: dict, pg: PostgresTrace, limit: int = 15) -> str:
    """Each slow click statement and reactor turn, with what coincided with it."""
    events = pg.log_events()
    lines = [f"PostgreSQL during the run ({len(pg.samples)} wait samples, "
             f"{len(events)} log lines):"] + pg.counter_deltas()
    kinds: dict[str, int] = {}
    for _, line in events:
        for word in ("checkpoint starting", "checkpoint complete", "automatic vacuum", "automatic analyze", "duration:",
                     "still waiting"):
            if word in line:
                kinds[word] = kinds.get(word, 0) + 1
    lines.append("  log lines: " + (", ".join(f"{k} x{v}" for k, v in kinds.items()) or "none"))
    lines.append(f"  WAL segments begun during the run: {max(0, len(pg.segments) - 1)} ("
                 + ", ".join(f"{_hms(at)} {name[-8:]}" for at, name in pg.segments[1:]) + ")")
    waits: dict[str, int] = {}
    for _, _, kind, wait in pg.samples:
        waits[f"{kind} {wait}"] = waits.get(f"{kind} {wait}", 0) + 1
    lines.append("  wait samples, whole run: " + ", ".join(
        f"{k} x{v}" for k, v in sorted(waits.items(), key=lambda kv: -kv[1])[:8]))
    stalls = stall_windows(trace["slow_requests"])
    lines.append(f"stalls (requests slower than {SLOW_MS:g} ms inside the daemon, grouped "
                 f"when they overlap): {len(stalls)}, {len(trace['slow_requests'])} requests")
    for start, end, n in sorted(stalls, key=lambda s: s[0] - s[1])[:limit]:
        lines.append(f"  at {_hms(start)}: {n} requests, the window {1000 * (end - start):.0f} ms")
        lines += _window_summary(start, end, trace, pg, events)
    slow = sorted(trace["slow_statements"], key=lambda s: -s[2])[:limit]
    lines.append(f"slow click statements (> {SLOW_MS:g} ms): {len(trace['slow_statements'])}")
    for at, n, took in sorted(slow):
        lines.append(f"  at {_hms(at)}: {n} clicks, {1000 * took:.0f} ms")
        lines += _window_summary(at, at + took, trace, pg, events)
    turns = [t for t in trace["slow_turns"] if t[1] > SLOW_MS / 1000]
    lines.append(f"reactor turns > {SLOW_MS:g} ms: {len(turns)}; "
                 f"> {SLOW_MS / 5:g} ms: {len(trace['slow_turns'])}")
    for at, took, cpu in sorted(turns, key=lambda t: -t[1])[:limit]:
        lines.append(f"  at {_hms(at)}: {1000 * took:.0f} ms, {1000 * cpu:.0f} ms of it on a CPU")
        lines += _window_summary(at, at + took, trace, pg, events)
    return "\n".join(lines)
