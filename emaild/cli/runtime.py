"""
What every C{emaild} command runs on: the parts it works with
(L{CommandParts}, the one place the CLI builds them), opening the database
with a one-line error, Ctrl-C handling (L{Interruption}) and the progress
bar (L{watch}).

A command module has C{add_parser(commands, common)}, which adds its
subparser and sets C{func}: an C{async def func(parts, args) -> int} that
gets the L{CommandParts} and the parsed arguments (with
C{args.interruption}, an L{Interruption}) and returns the exit code.
"""

from __future__ import annotations

import shutil
import sys

from twisted.internet import defer, task

from emaild.cli.output import CliError, Interrupted, drained_line, one_line, progress_line
from emaild.homeserver import HomeServer
from emaild.outbound.stats import finished, pending


class CommandParts(HomeServer):
    """
    The command's composition root: the daemon's L{HomeServer} (every part
    built once, on first use, with its C{get_*} methods), with the CLI's
    answers to a broken configuration and an unreachable database.

    @ivar db: the L{emaild.db.database.Database}, not yet open (see
        L{open_database}).
    @ivar embedded: the L{emaild.db.embedded.EmbeddedPostgres} under the
        state directory, or None when a database URL is configured.
    """

    @property
    def db(self):
        return self.get_database()

    @property
    def embedded(self):
        return self.get_embedded_postgres()

    def get_outbox(self):
        """
        The outbox and its composer; a missing template folder or a broken
        config is a configuration error (exit code 2).
        """
        try:
            return super().get_outbox()
        except (FileNotFoundError, RuntimeError) as e:
            raise CliError(f"configuration error: {e}", 2) from None

    async def close(self) -> None:
        # the embedded server stops only if no daemon (or other command) uses it
        await self.close_database()


async def open_database(parts: CommandParts) -> None:
    """
    Open (starting the embedded PostgreSQL if that is the database) and
    migrate the database, with any failure turned into one clear line.

    @raise CliError: it cannot be started or reached.
    """
    import psycopg2

    from emaild.db.database import DatabaseUnavailable
    from emaild.db.embedded import EmbeddedPostgresError

    try:
        await parts.open_database()
    except EmbeddedPostgresError as e:
        first = (str(e).strip().splitlines() or ["failed"])[0]
        raise CliError(f"cannot start the embedded PostgreSQL: {first} "
                       f"(see {parts.embedded.data_dir / 'server.log'})") from None
    except (DatabaseUnavailable, psycopg2.Error, OSError) as e:
        raise CliError(f"cannot open the database: {one_line(e)}") from None


class Interruption:
    """
    Ctrl-C asks the command to stop at its next safe point: after the
    current transaction, or at once while it sleeps.  (Cancelling a query in
    flight is not safe: txpostgres cannot always cancel cleanly.)
    """

    def __init__(self, reactor):
        self.reactor = reactor
        self.requested = False
        self._sleeping: defer.Deferred | None = None

    def request(self) -> None:
        self.requested = True
        if self._sleeping is not None:
            self._sleeping.cancel()

    def check(self) -> None:
        if self.requested:
            raise Interrupted()

    async def sleep(self, seconds: float) -> None:
        self.check()
        self._sleeping = task.deferLater(self.reactor, seconds, lambda: None)
        try:
            await self._sleeping
        except defer.CancelledError:
            pass
        finally:
            self._sleeping = None
        self.check()


async def watch(reactor, summarise, interval: float, interruption: Interruption) -> None:
    """
    Redraw a progress line until nothing is queued or sending; the rate is
    over the last ~15 seconds.

    @param summarise: fires with the L{emaild.outbound.stats.queue_summary}
        to draw (the whole outbox, or one batch: C{emaild announce} watches
        its own).
    """
    out = sys.stdout
    tty = out.isatty()
    samples: list[tuple[float, int]] = []
    drawn = 0

    def redraw(line: str) -> None:  # one screen line, or \r cannot redraw it
        nonlocal drawn
        line = line[:shutil.get_terminal_size().columns - 1]
        out.write("\r" + line.ljust(drawn))
        out.flush()
        drawn = max(drawn, len(line))

    while True:
        summary = await summarise()
        now, done = reactor.seconds(), finished(summary)
        samples.append((now, done))
        while len(samples) > 2 and now - samples[0][0] > 15:
            samples.pop(0)
        elapsed = now - samples[0][0]
        rate = max(0, done - samples[0][1]) / elapsed if elapsed > 0 else 0.0
        if pending(summary) == 0:
            if tty and drawn:
                redraw(progress_line(summary, rate))
                out.write("\n")
            print(drained_line(summary), flush=True)
            return
        if tty:
            redraw(progress_line(summary, rate))
        else:
            print(progress_line(summary, rate), flush=True)
        await interruption.sleep(interval)
