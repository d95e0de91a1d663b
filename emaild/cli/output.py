"""
Text the C{emaild} command prints: tables, the progress bar, the CSV summary
and the C{check} report.  Pure functions (apart from L{CheckReport}'s
printing), so the CLI module stays about arguments and the database.
"""

from __future__ import annotations

import datetime
import sys
from typing import Iterable, Sequence, TextIO

from emaild.db.database import redact
from emaild.outbound.stats import finished, pending
from emaild.outbound.store import STATES, Failure, Suppression


class CliError(Exception):
    """
    An expected failure: print C{emaild: <message>} and exit with C{code}.
    """

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.message = message
        self.code = code



class Interrupted(Exception):
    """
    Ctrl-C was pressed; raised at the next safe point (between transactions).
    """


def one_line(error: BaseException | str) -> str:
    """
    An error as one line: whitespace runs (newlines too) become one space,
    passwords are hidden.
    """
    text = str(error) or type(error).__name__
    return redact(" ".join(text.split()))


def table(headers: Sequence[str], rows: Iterable[Sequence[object]],
          right: Sequence[bool] | None = None) -> str:
    """
    A plain-text table; columns flagged in C{right} are right-aligned, the
    last column is never padded (it may hold long free text).
    """
    rows = [[("" if v is None else str(v)) for v in row] for row in rows]
    right = right or [False] * len(headers)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = []
    for cells in [list(headers)] + rows:
        out = []
        for i, cell in enumerate(cells):
            last = i == len(cells) - 1
            if right[i]:
                out.append(cell.rjust(widths[i]))
            else:
                out.append(cell if last else cell.ljust(widths[i]))
        lines.append("  ".join(out).rstrip())
    return "\n".join(lines)


def counts_table(summary: dict) -> str:
    """
    One row per QoS class and a total row; one column per state.
    """
    rows = []
    for qos, per_state in summary["by_class"].items():
        rows.append([qos] + [per_state[s] for s in STATES] + [sum(per_state.values())])
    rows.append(["total"] + [summary[s] for s in STATES] + [summary["total"]])
    headers = ["class", *STATES, "total"]
    return table(headers, rows, right=[False] + [True] * (len(headers) - 1))


def when(value) -> str:
    """
    A time as C{YYYY-MM-DD HH:MM:SSZ} (UTC), C{-} for None.
    """
    if value is None:
        return "-"
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.timezone.utc)
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def failures_table(rows: Sequence[Failure]) -> str:
    """
    L{OutboxStore.failures} rows.
    """
    if not rows:
        return "no failed messages"
    return table(
        ["id", "recipient", "template", "class", "attempts", "finished (UTC)", "reason / last reply"],
        [[f.outbox_id, f.recipient, f.template, f.qos, f.attempts, when(f.finished_at),
          one_line(f.reason or "-")] for f in rows],
        right=[True, False, False, False, True, False, False],
    )


def failures_json(rows: Sequence[Failure]) -> list[dict]:
    return [
        {"id": f.outbox_id, "recipient": f.recipient, "template": f.template, "qos": f.qos,
         "attempts": f.attempts, "reason": f.reason,
         "finished_at": f.finished_at.isoformat() if f.finished_at is not None else None}
        for f in rows
    ]


def suppressions_table(rows: Sequence[Suppression]) -> str:
    """
    L{OutboxStore.suppressions} rows.
    """
    if not rows:
        return "no suppressed addresses"
    return table(["address", "since (UTC)", "reason"],
                 [[s.address, when(s.created_at), one_line(s.reason or "-")] for s in rows])


def suppressions_json(rows: Sequence[Suppression]) -> list[dict]:
    return [{"address": s.address, "reason": s.reason,
             "since": s.created_at.isoformat() if s.created_at is not None else None}
            for s in rows]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(summary: dict, rate: float, width: int = 24) -> str:
    """
    C{[#####-----]  50.0%  500/1000  12.5/s  eta 36s  queued 450, sending 50, …}
    (the most useful part first: a narrow terminal cuts the end off).
    """
    total = summary["total"]
    done = finished(summary)
    fraction = done / total if total else 1.0
    filled = int(fraction * width)
    line = f"[{'#' * filled}{'-' * (width - filled)}] {fraction * 100:5.1f}%  {done}/{total}  {rate:.1f}/s"
    if rate > 0 and pending(summary):
        line += f"  eta {_duration(pending(summary) / rate)}"
    return line + "  " + ", ".join(f"{s} {summary[s]}" for s in STATES)


def drained_line(summary: dict) -> str:
    return ("queue drained: " + ", ".join(f"{s} {summary[s]}" for s in STATES)
            + f" (total {summary['total']})")


def csv_summary(queued: int, first: int | None, last: int | None,
                rejected: Sequence[tuple[int, str, str]]) -> str:
    """
    C{queued N messages (ids A–B), rejected M rows} and a line per rejected
    row: C{line L: <address>: <reason>}.
    """
    ids = f" (ids {first}\u2013{last})" if queued else ""
    noun = "message" if queued == 1 else "messages"
    return "\n".join([f"queued {queued} {noun}{ids}, rejected {len(rejected)} "
                      f"{'row' if len(rejected) == 1 else 'rows'}",
                      *rejected_lines(rejected, "queued; fix and send them again")])


def rejected_lines(rejected: Sequence[tuple[int, str, str]], consequence: str) -> list[str]:
    """
    C{line L: <address>: <reason>} for each rejected CSV row, then what
    became of them (C{"the 2 rejected rows were not <consequence>"}).
    """
    lines = [f"line {line}: {address.strip() or '(empty)'}: {one_line(reason)}"
             for line, address, reason in rejected]
    if rejected:
        lines.append(f"the {len(rejected)} rejected "
                     f"{'row was' if len(rejected) == 1 else 'rows were'} not {consequence}")
    return lines


class CheckReport:
    """
    Prints one line per checked item as it goes and remembers the failures.
    """

    def __init__(self, out: TextIO | None = None):
        self.out = out or sys.stdout
        self.passed = 0
        self.failed: list[str] = []

    def ok(self, item: str, detail: str = "") -> None:
        self.passed += 1
        self._line("ok  ", item, detail)

    def fail(self, item: str, detail: str) -> None:
        self.failed.append(item)
        self._line("FAIL", item, one_line(detail))

    def skip(self, item: str, detail: str) -> None:
        self._line("skip", item, detail)

    def _line(self, label: str, item: str, detail: str) -> None:
        print(f"{label}  {item}" + (f": {detail}" if detail else ""), file=self.out, flush=True)
