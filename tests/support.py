"""
Shared test fixtures: a real PostgreSQL (embedded, started once per test run,
unless C{EMAILD_TEST_DATABASE_URL} names a server) with a fresh database per
test, and a config builder.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn
from twisted.internet import defer, reactor
from twisted.trial import unittest

from emaild.config import load_config
from emaild.db.database import Database
from emaild.db.embedded import EmbeddedPostgres
from emaild.db.migrations import migrate

_admin_dsn: str | None = None
_counter = itertools.count()


def admin_dsn() -> str:
    """
    A DSN with the right to create databases, starting the embedded server
    on first use.
    """
    global _admin_dsn
    if _admin_dsn is None:
        url = os.environ.get("EMAILD_TEST_DATABASE_URL")
        if url:
            _admin_dsn = url
        else:
            root = Path(tempfile.mkdtemp(prefix="emaild-test-pg-"))
            server = EmbeddedPostgres(root / "data", database="postgres")
            _admin_dsn = server.start()

            def destroy():
                server.destroy()
                shutil.rmtree(root, ignore_errors=True)

            atexit.register(destroy)
    return _admin_dsn


def _admin_execute(sql: str) -> None:
    conn = psycopg2.connect(admin_dsn())
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


def create_database() -> str:
    """
    Create an empty database; return its DSN.
    """
    name = f"emaild_test_{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
    _admin_execute(f'CREATE DATABASE "{name}"')
    return make_dsn(admin_dsn(), dbname=name)


def drop_database(dsn: str) -> None:
    name = parse_dsn(dsn)["dbname"]
    _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_config(tmp: Path | str, dsn: str = "", **sections):
    """
    A validated config for tests: state under C{tmp}, the given database,
    and C{sections} as overrides, e.g. C{relay={"rate": 100}}.
    """
    # the inbound SMTP server listens on any free port unless a test says
    overrides = {"paths": {"state_dir": str(tmp)}, "database": {"url": dsn},
                 "smtp": {"endpoint": "tcp:0:interface=127.0.0.1"}}
    for section, values in sections.items():
        overrides.setdefault(section.replace("__", "."), {}).update(values)
    return load_config(None, environ={}, overrides=overrides)


class DatabaseTestCase(unittest.TestCase):
    """
    Each test gets a fresh, migrated database in C{self.db} (a real
    txpostgres pool) and its DSN in C{self.dsn}.
    """

    pool_size = 3
    #: [database] prepared_statements
    prepare = True

    def setUp(self):
        self.tmp = Path(self.mktemp()).absolute()
        self.tmp.mkdir(parents=True)
        self.dsn = create_database()
        self.addCleanup(drop_database, self.dsn)
        self.db = Database(reactor, self.dsn, pool_size=self.pool_size, prepare=self.prepare)
        self.addCleanup(self.db.close)
        return defer.ensureDeferred(self._open())

    async def _open(self):
        await self.db.start()
        await migrate(self.db)

    def config(self, **sections):
        return make_config(self.tmp, self.dsn, **sections)

    def homeserver(self, config=None, db=None):
        """
        A L{HomeServer} on C{config} (default: L{config}()) and the test's
        open database (or C{db}); it builds every part the way the daemon does.
        """
        from emaild.homeserver import HomeServer

        return HomeServer(config or self.config(), reactor, database=db or self.db)

    def query(self, sql: str, params=None) -> list[tuple]:
        """
        Read the database synchronously, outside the pool (for assertions).
        """
        conn = psycopg2.connect(self.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                rows = cur.fetchall() if cur.description else []
            conn.commit()
            return rows
        finally:
            conn.close()


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    """
    Poll C{predicate} (sync or async) on the real reactor until true.
    """
    from twisted.internet import task

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, defer.Deferred) or hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await task.deferLater(reactor, interval, lambda: None)


def record_statements(case: unittest.TestCase) -> list[str]:
    """
    From now until C{case} ends, the SQL of every message the pooled
    connections send (as psycopg2 sent it, parameters quoted); one refused
    before sending is not in it.
    """
    from emaild.db import pool

    sent: list[str] = []
    doit = pool.Cursor._doit

    def recording(cursor, name, *args, **kwargs):
        before = cursor._connection.progress.sent
        d = doit(cursor, name, *args, **kwargs)
        if cursor._connection.progress.sent > before:
            sent.append(cursor._cursor.query.decode())
        return d

    case.patch(pool.Cursor, "_doit", recording)
    return sent


def http_get(url: str, timeout: float = 10.0):
    """
    GET C{url} with the standard library in a thread (a client that is not
    ours); fires with (status, headers, parsed JSON or text).
    """
    import json
    import urllib.error
    import urllib.request

    from twisted.internet import threads

    def get():
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                status, headers, raw = response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:
            status, headers, raw = e.code, e.headers, e.read()
        text = raw.decode("utf-8")
        if headers.get("Content-Type", "").startswith("application/json"):
            return status, headers, json.loads(text)
        return status, headers, text

    return threads.deferToThread(get)


def altered(token: str) -> str:
    """
    C{token} with its last character changed (always to a different one: a
    fixed replacement equals the original whenever the token already ends
    with it, which made CSRF tests pass a valid token about once in 60 runs).
    """
    return token[:-1] + ("a" if token[-1] != "a" else "b")


def repair_reactor() -> list[int]:
    """
    Undo what a test left in the global reactor when its descriptor tables
    are inconsistent: return the descriptor numbers it watched for a
    selectable that no longer has that number (closed while registered),
    after forgetting them, removing every selectable left, and stopping
    the reactor's thread pool.  Trial's own clean-up does the last two, but
    it fails on such tables: then every later test fails in it, and the
    pool's idle threads keep the interpreter from exiting.

    There is no public way to do this: the epoll reactor (Linux's default)
    keeps C{_reads}, C{_writes} and C{_selectables}; other reactors are left
    alone.
    """
    reads, writes = getattr(reactor, "_reads", None), getattr(reactor, "_writes", None)
    selectables = getattr(reactor, "_selectables", None)
    if not (isinstance(reads, set) and isinstance(writes, set) and isinstance(selectables, dict)):
        return []
    stale = []
    for fd in sorted(reads | writes):
        selectable = selectables.get(fd)
        try:
            current = selectable.fileno() if selectable is not None else None
        except Exception:
            current = None
        if current == fd:
            continue
        stale.append(fd)
        reads.discard(fd)
        writes.discard(fd)
        selectables.pop(fd, None)
        try:
            reactor._poller.unregister(fd)
        except (OSError, ValueError, AttributeError):
            pass  # closed, or another descriptor that was never registered
    if stale:
        reactor.removeAll()
        if getattr(reactor, "threadpool", None) is not None:
            reactor._stopThreadPool()  # as trial's clean-up would have
    return stale
