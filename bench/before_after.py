"""
One run, two revisions: the same short set of benchmarks against an earlier
revision (a temporary git worktree of it) and against this checkout,
alternating before/after, then one table of throughput and CPU per unit side
by side.

    PYTHONPATH=$PWD .venv/bin/python bench/before_after.py 68fc3c1       # ~20 min
    PYTHONPATH=$PWD .venv/bin/python bench/before_after.py 68fc3c1 --smoke

Each revision runs its own bench scripts on its own code (PYTHONPATH and the
working directory are its tree; the worktree borrows this checkout's .venv
and .tools), with the same command line.  An option the earlier revision's
script does not know is left out for both (listed in the output), so both
measure the same thing, except for the few that only ask for what the
earlier script does anyway (L{WHERE_KNOWN}: loopback only, how long to wait
for a quiet machine); a script the earlier revision does not have runs
after only.  throughput.py is the exception: this checkout's script runs the
earlier revision's daemon itself (C{--variant before=TREE}), interleaved
with this checkout's, so both are measured by the same code in one run.  Every bench prints its tables (common.table: a header, a line of
dashes, rows); this script reads every column that is a rate (".../s") or a
cost per unit ("ms/...", "... ms", and CPU-seconds columns turned into ms
per row queued or post stored, marked "(from s)": only as fine as the
seconds printed) and reports the median of each (bench, row, column) over the rounds.

Take the figures that count on a quiet machine: compare CPU per unit first
(it moves least with other load), then throughput, and only within this run.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: name -> (script, arguments for the run that counts, arguments for --smoke)
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    "throughput": ("throughput.py",
                   ["--messages", "3000", "--runs", "1x4", "--rounds", "1", "--rtt", "0",
                    "--max-wait", "30"],
                   ["--messages", "200", "--runs", "1x1", "--rounds", "1", "--rtt", "0",
                    "--baseline-messages", "50", "--max-wait", "1"]),
    "links": ("links_bench.py",
              ["--duration", "10", "--warmup", "3", "--rounds", "1", "--quiet-wait", "30"],
              ["--duration", "2", "--warmup", "1", "--rounds", "1", "--links", "200",
               "--connections", "4", "--threads", "1", "--quiet-wait", "0"]),
    "lti": ("lti_bench.py", ["--launches", "300", "--rounds", "1"],
            ["--launches", "10", "--rounds", "1"]),
    "enqueue": ("enqueue.py", ["--sizes", "2000,10000"], ["--sizes", "200"]),
    "inbound accept": ("inbound.py",
                       ["--only", "accept", "--messages", "3000", "--rounds", "1",
                        "--quiet-wait", "30"],
                       ["--only", "accept", "--messages", "100", "--sessions", "4",
                        "--rounds", "1", "--quiet-wait", "0"]),
}

#: benches whose current script can run the earlier revision's daemon in the
#: same run (C{--variant LABEL=DIR}): one run per round measures both, the
#: same way, interleaved; its rows labelled C{[before]} are the earlier code's
VARIANT_BENCHES = {"throughput"}

#: options passed to each revision whose script knows them, and left out
#: elsewhere: a script without them already behaves as they ask (the earlier
#: throughput.py runs on loopback only, with no proxied runs to size; waiting
#: for a quiet machine changes no figure, only when it is taken)
WHERE_KNOWN = {"--rtt", "--baseline-messages", "--max-wait", "--quiet-wait"}

#: (bench, the earlier revision's row) -> this checkout's row doing the same
#: work: 68fc3c1's inbound server had no sender authentication, which is
#: today's daemon with it turned off
BEFORE_ROWS = {("inbound accept", "emaild"): "auth off"}

_RATE = re.compile(r"/s$")
_COST = re.compile(r"\bms/|\bms$")


def known_options(tree: Path, script: str) -> set[str] | None:
    """
    The options C{script} of C{tree} accepts (from its --help), or None
    when that tree has no such script.
    """
    path = tree / "bench" / script
    if not path.exists():
        return None
    result = subprocess.run([sys.executable, str(path), "--help"], cwd=tree, env=env_for(tree),
                            capture_output=True, text=True, timeout=120)
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", result.stdout))


def common_arguments(arguments: list[str], known: list[set[str]], mine: set[str]
                     ) -> tuple[list[str], list[str]]:
    """
    C{arguments} for the tree whose script knows C{mine}: less every option
    (with its value) one of the trees does not know, except that an option
    of L{WHERE_KNOWN} is kept wherever it is known; and the options left out.
    """
    kept, dropped = [], []
    i = 0
    while i < len(arguments):
        option = arguments[i]
        has_value = i + 1 < len(arguments) and not arguments[i + 1].startswith("--")
        group = arguments[i:i + 2] if has_value else arguments[i:i + 1]
        if all(option in k for k in known) or (option in WHERE_KNOWN and option in mine):
            kept += group
        else:
            dropped.append(option)
        i += len(group)
    return kept, dropped


def env_for(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}


def parse_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """
    Every table common.table printed: (headers, rows of cells); the cells
    are cut at the columns the line of dashes marks.
    """
    lines = text.splitlines()
    tables = []
    for i in range(1, len(lines)):
        dashes = lines[i]
        if not re.fullmatch(r"-+(  +-+)+ *", dashes):
            continue
        spans = [m.span() for m in re.finditer(r"-+", dashes)]
        # right-aligned cells may start left of their dashes: cut between columns
        cuts = [0] + [spans[k][1] for k in range(len(spans) - 1)] + [10**6]

        def cells(line, cuts=cuts):
            return [line[cuts[k]:cuts[k + 1]].strip() for k in range(len(cuts) - 1)]

        headers = cells(lines[i - 1])
        rows = []
        for line in lines[i + 1:]:
            if not line.strip():
                break
            rows.append(cells(line))
        tables.append((headers, rows))
    return tables


def figures(bench: str, text: str) -> dict[tuple[str, str, str], list[float]]:
    """
    {(bench, row, column): values} of every rate and cost per unit in
    C{text} (a row label repeats when the bench ran several rounds).
    """
    found: dict[tuple[str, str, str], list[float]] = {}
    for headers, rows in parse_tables(text):
        for row in rows:
            label = row[0] if headers[0] != "rows" else f"{row[0]} rows"
            for header, cell in zip(headers[1:], row[1:]):
                value = _number(cell)
                if value is None:
                    continue
                # what a CPU-seconds column is per: the rows queued or the posts stored
                units = ("row", _number(row[0])) if headers[0] == "rows" else (
                    ("post", _number(row[headers.index("stored")]))
                    if "stored" in headers else ("", None))
                if _RATE.search(header) or _COST.search(header):
                    found.setdefault((bench, label, header), []).append(value)
                elif header.endswith("cpu s") and units[1]:
                    found.setdefault((bench, label, f"{header[:-2]} ms/{units[0]} (from s)"),
                                     []).append(value * 1000 / units[1])
    return found


def _number(cell: str) -> float | None:
    try:
        return float(cell.replace(",", ""))
    except ValueError:
        return None


@contextlib.contextmanager
def worktree(rev: str, keep: bool):
    where = Path(tempfile.mkdtemp(prefix="emaild-before-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(where), rev], cwd=REPO,
                   check=True, capture_output=True)
    for shared in (".venv", ".tools"):
        if (REPO / shared).exists() and not (where / shared).exists():
            (where / shared).symlink_to((REPO / shared).resolve())
    try:
        yield where
    finally:
        if not keep:
            subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=REPO,
                           capture_output=True)
            shutil.rmtree(where, ignore_errors=True)


@contextlib.contextmanager
def locked(path: str | None):
    """Hold C{path} (flock) so that two benchmark runs never overlap."""
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_one(tree: Path, script: str, arguments: list[str], log: Path, lock: str | None,
            timeout: float) -> tuple[str, float, int]:
    argv = [str(tree / ".venv" / "bin" / "python") if (tree / ".venv").exists()
            else sys.executable, str(tree / "bench" / script), *arguments]
    with locked(lock):
        started = time.monotonic()
        try:
            result = subprocess.run(argv, cwd=tree, env=env_for(tree), capture_output=True,
                                    text=True, timeout=timeout)
            output, code = result.stdout + result.stderr, result.returncode
        except subprocess.TimeoutExpired as e:
            output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            output, code = output + f"\n(timed out after {timeout:.0f} s)", -1
        took = time.monotonic() - started
    log.write_text(" ".join(argv) + "\n\n" + output)
    return output, took, code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="the earlier revision (e.g. 68fc3c1)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="before/after pairs per bench, alternating which goes first "
                             "(default 2)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny numbers: checks that everything runs, measures nothing")
    parser.add_argument("--only", action="append", choices=sorted(BENCHES),
                        help="run only this bench (repeatable)")
    parser.add_argument("--lock", help="hold this file (flock) during each bench run")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds one bench run may take (default 900)")
    parser.add_argument("--out", help="folder for the logs (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the earlier revision's tree")
    args = parser.parse_args(argv)
    # a plain kill still removes the temporary worktree (the finally clauses run)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    out = Path(args.out or tempfile.mkdtemp(prefix="emaild-before-after-"))
    out.mkdir(parents=True, exist_ok=True)
    after_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    after_label = after_rev + (" + changes" if dirty else "")
    names = args.only or list(BENCHES)
    results: dict[str, dict[tuple[str, str, str], list[float]]] = {"before": {}, "after": {}}
    notes: list[str] = []
    started = time.monotonic()
    with worktree(args.before, args.keep) as before_tree:
        trees = {"before": before_tree, "after": REPO}
        print(f"before: {args.before} in {before_tree}; after: {after_label} in {REPO}; "
              f"logs in {out}", flush=True)
        for name in names:
            script, full, smoke = BENCHES[name]
            wanted = smoke if args.smoke else full
            known = {side: known_options(tree, script) for side, tree in trees.items()}
            if name in VARIANT_BENCHES and "--variant" in (known["after"] or set()):
                arguments_both = wanted + ["--variant", f"before={before_tree}"]
                for round_number in range(args.rounds):
                    log = out / f"{name}-both-{round_number + 1}.log"
                    print(f"[{time.monotonic() - started:6.0f} s] {name} before and after, "
                          f"round {round_number + 1}: {script} {' '.join(arguments_both)}",
                          flush=True)
                    output, took, code = run_one(REPO, script, arguments_both, log, args.lock,
                                                 args.timeout)
                    found = figures(name, output)
                    for (bench, label, column), values in found.items():
                        side = "before" if label.endswith(" [before]") else "after"
                        key = (bench, label.removesuffix(" [before]"), column)
                        results[side].setdefault(key, []).extend(values)
                    if code != 0 or not found:
                        notes.append(f"{name} round {round_number + 1}: exit {code}, "
                                     f"{len(found)} figures (see {log})")
                    print(f"         {took:.0f} s, exit {code}, {len(found)} figures", flush=True)
                notes.append(f"{name}: this checkout's {script} ran both revisions' daemons "
                             "in one run (--variant)")
                continue
            present = [side for side in trees if known[side] is not None]
            if not present:
                notes.append(f"{name}: {script} exists in neither revision")
                continue
            every = [k for s in present if (k := known[s])]
            arguments = {side: common_arguments(wanted, every, known[side] or set())
                         for side in present}
            for side in present:
                if arguments[side][1]:
                    notes.append(f"{name} {side}: left out {', '.join(arguments[side][1])}")
            if len(present) < 2:
                notes.append(f"{name}: {script} exists only {present[0]}")
            for round_number in range(args.rounds):
                order = present if round_number % 2 == 0 else present[::-1]
                for side in order:
                    log = out / f"{name.replace(' ', '-')}-{side}-{round_number + 1}.log"
                    print(f"[{time.monotonic() - started:6.0f} s] {name} {side} "
                          f"round {round_number + 1}: {script} {' '.join(arguments[side][0])}",
                          flush=True)
                    output, took, code = run_one(trees[side], script, arguments[side][0], log,
                                                 args.lock, args.timeout)
                    found = figures(name, output)
                    if side == "before":
                        found = {(b, BEFORE_ROWS.get((b, row), row), c): v
                                 for (b, row, c), v in found.items()}
                    if code != 0 or not found:
                        notes.append(f"{name} {side} round {round_number + 1}: exit {code}, "
                                     f"{len(found)} figures (see {log})")
                    for key, values in found.items():
                        results[side].setdefault(key, []).extend(values)
                    print(f"         {took:.0f} s, exit {code}, {len(found)} figures", flush=True)

    print()
    print(report(results, args.before, after_label))
    for note in notes:
        print(f"note: {note}")
    print(f"total {time.monotonic() - started:.0f} s; logs in {out}"
          + ("; --smoke: tiny numbers, the figures mean nothing" if args.smoke else ""))
    return 0


def report(results, before_label: str, after_label: str) -> str:
    keys = sorted(set(results["before"]) | set(results["after"]),
                  key=lambda k: (list(BENCHES).index(k[0]), k[1], k[2]))
    rows = []
    for bench, label, column in keys:
        before = results["before"].get((bench, label, column))
        after = results["after"].get((bench, label, column))
        b = statistics.median(before) if before else None
        a = statistics.median(after) if after else None
        ratio = f"{a / b:.2f}" if a is not None and b else "-"
        rows.append([bench, label, column, _show(b), _show(a), ratio,
                     str(max(len(before or ()), len(after or ())))])
    headers = ["bench", "row", "figure", f"before {before_label}", f"after {after_label}",
               "after/before", "n"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i > 2 else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows]
                     + ["(medians over rounds; .../s: throughput, higher is better; ms/...: "
                        "CPU or time per unit, lower is better; n: values per median)"])


def _show(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}"


if __name__ == "__main__":
    sys.exit(main())
