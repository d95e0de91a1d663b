"""
C{emaild send --recipients FILE.csv}: stream a CSV into the outbox.

The file is read with L{csv.DictReader} and queued in chunks of
L{CSV_CHUNK} rows, one transaction each (through an L{EnqueuePipeline}:
the next chunk renders while one is written), so memory stays flat however
long the file is.  The C{email} column is the
recipient; every other column is that row's template context (empty cells
stay empty strings).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from emaild.cli.output import CliError, Interrupted, csv_summary, one_line
from emaild.outbound.compose import ComposeError
from emaild.outbound.pipeline import EnqueuePipeline, next_turn

#: CSV rows per transaction
CSV_CHUNK = 1000


def read_header(path: str, what: str = "error"):
    """
    Open C{path} (UTF-8, a BOM tolerated) and read its header line; return
    the open file, its reader and the column names, stripped.

    @param what: how the path was given, for the message when it cannot
        be opened (e.g. C{"error: --recipients"}).
    @raise CliError: unreadable or empty.
    """
    try:
        f = open(path, encoding="utf-8-sig", newline="")
    except OSError as e:
        raise CliError(f"{what}: cannot open {path}: {e.strerror or e}", 2) from None
    try:
        reader = csv.DictReader(f, restval="")
        fields = reader.fieldnames
    except (UnicodeDecodeError, csv.Error) as e:
        f.close()
        raise CliError(f"{path}: cannot read the header line: {one_line(e)}") from None
    if not fields:
        f.close()
        raise CliError(f"{path} is empty: expected a header line with an 'email' column")
    return f, reader, [name.strip() for name in fields]


def open_csv(path: str):
    """
    Open a recipients CSV; return the open file and its reader, whose
    recipient column is now called C{email} (C{Email} or C{ EMAIL } will do).

    @raise CliError: unreadable, empty, or no C{email} column.
    """
    f, reader, names = read_header(path, "error: --recipients")
    lowered = [name.lower() for name in names]
    if "email" not in lowered:
        f.close()
        found = ", ".join(repr(n) for n in names)
        raise CliError(f"{path} has no 'email' column; columns found: {found}")
    names[lowered.index("email")] = "email"
    reader.fieldnames = names
    return f, reader


def open_checked_csv(path: str, columns):
    """
    Open an import file whose header must name exactly some of C{columns}
    (case and surrounding spaces do not matter): every required one, any of
    the optional ones, nothing else (a misspelt column is an error rather
    than silently ignored data), none twice.  Return the open file and its
    reader, whose columns are now called by their names in C{columns}.

    @param columns: (name, required) pairs, in the order the error message
        lists them.
    @raise CliError: unreadable, empty, or a header that does not fit.
    """
    f, reader, stripped = read_header(path)
    names = [name.lower() for name in stripped]
    known = [name for name, _ in columns]
    missing = [name for name, required in columns if required and name not in names]
    unknown = [n for n in names if n not in known]
    if missing or unknown or len(set(names)) != len(names):
        f.close()
        problem = (f"has no {missing[0]!r} column" if missing else
                   f"has unknown columns {', '.join(repr(n) for n in unknown)}" if unknown else
                   "repeats a column")
        wanted = [name if required else f"{name} (optional)" for name, required in columns]
        expected = ", ".join(wanted[:-1]) + " and " + wanted[-1] if len(wanted) > 1 else wanted[0]
        found = ", ".join(repr(n) for n in stripped)
        raise CliError(f"{path} {problem}; expected {expected}; columns found: {found}")
    reader.fieldnames = names
    return f, reader


async def read_in_chunks(reader, path: str, parse, flush, *, chunk_size: int,
                         rejected: list, check_interrupt=lambda: None) -> str | None:
    """
    Turn each CSV row into an item with C{parse(row)} and hand them to
    C{await flush(items, lines)} C{chunk_size} at a time (C{lines}: the
    (line number, address) of each item).  A row with more cells than the
    header, or one C{parse} refuses with C{ValueError}, goes to C{rejected}
    as (line, address, reason).  C{check_interrupt} runs after each chunk
    and may raise L{Interrupted}.

    @return: None, or why the file could not be read to its end (the rows
        before the bad one are flushed).
    """
    chunk: list = []
    lines: list[tuple[int, str]] = []

    async def flush_chunk():
        await flush(chunk, lines)
        chunk.clear()
        lines.clear()

    try:
        for row in reader:
            address = row.get("email") or ""
            try:
                if None in row:
                    raise ValueError(f"{len(row[None])} more cells than the header's "
                                     f"{len(reader.fieldnames)} columns")
                item = parse(row)
            except ValueError as e:
                rejected.append((reader.line_num, address, str(e)))
                continue
            chunk.append(item)
            lines.append((reader.line_num, address))
            if len(chunk) >= chunk_size:
                await flush_chunk()
                check_interrupt()
        if chunk:
            await flush_chunk()
    except (UnicodeDecodeError, csv.Error) as e:
        error = f"{path}: cannot read past line {reader.line_num}: {one_line(e)}"
        if chunk:
            await flush_chunk()
        return error
    return None


async def send_csv(outbox, reader, path: str, template: str, qos: str | None,
                   batch: str | None, check_interrupt=lambda: None, out=None,
                   pause=next_turn) -> int:
    """
    Queue every row; print the summary (with every rejected row and why)
    and return the exit code: 0 when all rows were queued, else 1.

    Chunks go through an L{EnqueuePipeline}: chunk N+1 renders while chunk
    N is written, each chunk is its own transaction, and they commit in
    order.  Whatever happens, the summary counts exactly the chunks that
    committed.

    @param check_interrupt: called when a chunk committed, before the next
        one is written; raises L{Interrupted} to stop there (the summary of
        what was queued is still printed).
    @param pause: gives the reactor a turn (see L{EnqueuePipeline}).
    """
    out = out or sys.stdout
    batch = batch if batch is not None else Path(path).name
    try:
        pipeline = EnqueuePipeline(outbox, template, qos, batch, pause=pause)
    except ComposeError as e:
        raise CliError(str(e)) from None
    queued, first, last, rejected = 0, None, None, []
    #: the (line, address) of each row of the chunk being written
    writing: list[tuple[int, str]] = []

    async def committed():
        nonlocal queued, first, last
        report = await pipeline.wait()
        if report is None:
            return
        if report.ids:
            queued += len(report.ids)
            low, high = min(report.ids), max(report.ids)
            first = low if first is None else min(first, low)
            last = high if last is None else max(last, high)
        rejected.extend((writing[r.index][0], r.recipient, r.reason) for r in report.rejected)

    async def flush(chunk, lines):
        nonlocal writing
        rendered = await pipeline.render(list(chunk))
        await committed()
        check_interrupt()
        pipeline.write(rendered)
        writing = list(lines)

    try:
        try:
            error = await read_in_chunks(reader, path, lambda row: (row.pop("email"), row), flush,
                                         chunk_size=CSV_CHUNK, rejected=rejected)
        finally:
            await committed()  # the last chunk, or the one written when something failed
    except Interrupted:
        rejected.sort()
        print(csv_summary(queued, first, last, rejected), file=out, flush=True)
        print("emaild: interrupted; later rows were not queued", file=sys.stderr)
        raise
    if queued == 0 and not rejected and error is None:
        raise CliError(f"{path} has no recipient rows")
    rejected.sort()
    print(csv_summary(queued, first, last, rejected), file=out)
    if error:
        print(f"emaild: {error}", file=sys.stderr)
    return 1 if (rejected or error or not queued) else 0
