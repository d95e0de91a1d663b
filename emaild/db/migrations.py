"""
Numbered SQL migrations (C{migrations/NNNN_name.sql}), applied at start-up.

Several emaild processes may start at once against one database, so the whole
run holds a transaction-scoped advisory lock: the first applies what is
missing, the others wait and then find nothing to do.
"""

from __future__ import annotations

import re
from importlib import resources

from twisted.logger import Logger

log = Logger()

#: arbitrary constant identifying "emaild schema migration" advisory locks
MIGRATION_LOCK = 0x656D61696C64  # "emaild"

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def available() -> list[tuple[int, str, str]]:
    """
    Every migration shipped with the package, as (version, name, sql), in order.
    """
    found = []
    for entry in resources.files("emaild.db").joinpath("migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text("utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


async def _apply(cursor) -> list[str]:
    await cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
    await cursor.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY,"
        " name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    await cursor.execute("SELECT version FROM schema_migrations")
    done = {row[0] for row in cursor.fetchall()}
    applied = []
    for version, name, sql in available():
        if version in done:
            continue
        await cursor.execute(sql)
        await cursor.execute(
            "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
        )
        applied.append(name)
    return applied


async def migrate(database) -> list[str]:
    """
    Apply every missing migration in one transaction; return their names.
    """
    applied = await database.transaction(_apply)
    for name in applied:
        log.info("Applied migration {name}", name=name)
    return applied


async def schema_version(database) -> int:
    """
    The newest migration applied to the database (0 when none is).
    """
    rows = await database.runQuery("SELECT coalesce(max(version), 0) FROM schema_migrations")
    return rows[0][0]
