"""
Each table has one owning part, and only that part's modules name it in
SQL.  Another part writes it through the owner's store functions (C{*_txn}
when inside its own transaction) and reads it, inside one of its own
statements, through the owner's C{relations} module (parenthesised SELECTs
with a fixed set of columns), so the owner is the one place that knows the
table's shape.

The check scans every string literal (and the literal parts of every
f-string) of every module of emaild for a table name after an upper-case
C{FROM}, C{JOIN}, C{INTO}, C{UPDATE} or C{TABLE}.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from twisted.trial import unittest

import emaild

ROOT = Path(emaild.__file__).parent

#: part (a folder of emaild) -> the tables it owns; docs/design.md says the same
OWNERS: dict[str, set[str]] = {
    "db": {"schema_migrations"},
    "people": {"people", "courses", "course_members", "lti_identities", "lti_nonces",
               "lti13_identities", "lti13_login_states", "lti13_nonces", "lti13_roster",
               "lti13_roster_syncs"},
    "groups": {"groups", "group_members", "group_posts", "group_relayed_copies",
               "group_visits"},
    "links": {"links"},
    "outbound": {"outbox", "outbox_attempts", "suppressions", "mail_optouts", "send_buckets",
                 "send_daily_usage"},
    "inbound": {"inbound_messages", "inbound_recipients", "inbound_refusals", "bounces",
                "inbound_holds"},
    "notify": {"group_activity_notices", "group_activity_recipients"},
    "digest": {"digest_notes", "digest_runs", "digest_sent", "announcements",
               "announcement_recipients"},
    "web": {"web_sessions", "fresh_link_requests"},
}

#: statements not yet routed through the owner, in files another change is
#: editing; each entry must still be needed (the test says when it is not)
PENDING: dict[str, set[str]] = {}

_REFERENCE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+(?:ONLY\s+)?([a-z_][a-z_0-9]*)")


def tables_named(source: str, tables: set[str]) -> dict[str, set[int]]:
    """
    {table: line numbers} of every table of C{tables} that the string
    literals of C{source} name in SQL.
    """
    found: dict[str, set[int]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            # a placeholder is not a table: "FROM {PEOPLE} p" names none
            text = "".join(v.value if isinstance(v, ast.Constant) else " ( " for v in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        for name in _REFERENCE.findall(text):
            if name in tables:
                found.setdefault(name, set()).add(node.lineno)
    return found


def every_table() -> set[str]:
    created = set()
    for path in (ROOT / "db" / "migrations").glob("*.sql"):
        created.update(re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?([a-z_0-9]+)",
                                  path.read_text(encoding="utf-8")))
    return created


class TableOwnershipTests(unittest.TestCase):
    def test_every_table_has_one_owner(self):
        owned = [t for tables in OWNERS.values() for t in tables]
        self.assertEqual(len(owned), len(set(owned)), "a table with two owners")
        self.assertEqual(every_table() - {"schema_migrations"} - set(owned), set())
        self.assertEqual(set(owned) - every_table() - {"schema_migrations"}, set())

    def test_the_scanner_sees_sql(self):
        tables = {"people", "groups", "group_members"}
        source = ('q = "SELECT id FROM people p JOIN groups g ON g.id = 1"\n'
                  'r = f"UPDATE group_members SET x = {y} FROM {PEOPLE} p"\n'
                  'doc = "add or update people from a CSV, join groups"\n')
        self.assertEqual(tables_named(source, tables),
                         {"people": {1}, "groups": {1}, "group_members": {2}})

    def test_no_module_names_a_table_of_another_part(self):
        tables = set().union(*OWNERS.values())
        strays, stale = [], []
        for path in sorted(ROOT.rglob("*.py")):
            relative = path.relative_to(ROOT)
            part = relative.parts[0] if len(relative.parts) > 1 else ""
            named = tables_named(path.read_text(encoding="utf-8"), tables)
            foreign = {t: lines for t, lines in named.items()
                       if t not in OWNERS.get(part, set())}
            pending = PENDING.get(relative.as_posix(), set())
            for table, lines in sorted(foreign.items()):
                if table not in pending:
                    strays.append(f"emaild/{relative}:{min(lines)} names {table}")
            stale += [f"emaild/{relative} no longer names {t}" for t in pending - set(foreign)]
        self.assertEqual(strays, [], "\n".join(strays))
        self.assertEqual(stale, [], "remove from PENDING:\n" + "\n".join(stale))
