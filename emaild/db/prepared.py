"""
Server-side prepared statements for the statements run on every post,
click and message.

PostgreSQL parses, analyses and plans every statement it is sent as text;
for the short lookups and the batched CTEs of the hot paths that costs it
more than running them (the RCPT lookup: about 0.20 ms planning, 0.03 ms
executing, pg_stat_statements on the inbound burst of bench/inbound.py).
A L{Statement} is prepared once per pooled connection (C{PREPARE}, the
first time that connection runs it) and from then on sent as C{EXECUTE
name(...)}: PostgreSQL reuses its parse tree and, once it has seen that a
generic plan is as good as the custom ones, its plan.

psycopg2 has no protocol-level prepared statements, so this is SQL-level
C{PREPARE}, whose parameters psycopg2 still quotes on our side.  A prepared
statement lives as long as its server session, whatever happens to the
transaction it was made in (a rolled-back transaction keeps it; see the
tests), so a connection remembers the names it prepared until it
reconnects.  Connection poolers that hand one client's statements to
several server sessions (PgBouncer in transaction mode) break this: for
them, C{[database] prepared_statements = false} sends each statement as
plain text instead.
"""

from __future__ import annotations

import re

import attrs

_PLACEHOLDER = re.compile(r"\$(\d+)")
#: an identifier PostgreSQL keeps whole (63 bytes at most)
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")

#: every statement's name, so that two statements never share one
_NAMES: set[str] = set()


@attrs.frozen
class Statement:
    """
    A statement with numbered parameters (C{$1}, C{$2}, ...), run with
    L{emaild.db.database.Database.run_prepared} or, inside a transaction,
    the pool's C{cursor.execute_prepared(statement, params)} (whose rows
    are then fetched from the cursor as after C{cursor.execute}).

    @ivar name: the prepared statement's name, unique in the process
    @ivar sql: the statement, with C{$n} placeholders (each may be used
        more than once; give a placeholder a type with a cast, C{$1::text[]},
        where PostgreSQL cannot infer it)
    """

    name: str
    sql: str
    #: how many parameters C{EXECUTE} takes
    arity: int = attrs.field(init=False)
    prepare_sql: str = attrs.field(init=False)
    execute_sql: str = attrs.field(init=False)
    #: the same statement for psycopg2's own quoting (prepared statements off)
    plain_sql: str = attrs.field(init=False)

    def __attrs_post_init__(self):
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"not a statement name: {self.name!r}")
        if self.name in _NAMES:
            raise ValueError(f"two statements named {self.name!r}")
        _NAMES.add(self.name)
        numbers = {int(n) for n in _PLACEHOLDER.findall(self.sql)}
        arity = max(numbers, default=0)
        if numbers != set(range(1, arity + 1)):
            raise ValueError(f"statement {self.name!r} numbers its parameters"
                             f" {sorted(numbers)}: not 1 to {arity}")
        object.__setattr__(self, "arity", arity)
        object.__setattr__(self, "prepare_sql", f"PREPARE {self.name} AS {self.sql}")
        arguments = f"({', '.join(['%s'] * arity)})" if arity else ""
        object.__setattr__(self, "execute_sql", f"EXECUTE {self.name}{arguments}")
        plain = _PLACEHOLDER.sub(r"%(\1)s", self.sql.replace("%", "%%"))
        object.__setattr__(self, "plain_sql", plain)

    def plain_parameters(self, params) -> dict[str, object]:
        return {str(n): value for n, value in enumerate(params, 1)}

    def check(self, params) -> tuple:
        params = tuple(params)
        if len(params) != self.arity:
            raise TypeError(f"statement {self.name!r} takes {self.arity} parameters,"
                            f" given {len(params)}")
        return params


_NAMED = re.compile(r"%\((\w+)\)s")


class Variants:
    """
    Statements put together at run time from a few fixed parts (a caller's
    CTEs, a flag) with psycopg2's named parameters (C{%(name)s}): each
    distinct text becomes one L{Statement}, named C{PREFIX_1}, C{PREFIX_2},
    ...  At most C{limit} of them: a text that carried values rather than
    placeholders would otherwise make a new statement per call.
    """

    def __init__(self, prefix: str, limit: int = 16):
        self.prefix = prefix
        self.limit = limit
        self._by_text: dict[str, tuple[Statement, tuple[str, ...]]] = {}

    def bind(self, sql: str, params: dict) -> tuple[Statement, list]:
        """The statement for C{sql}, and C{params}' values in its order."""
        found = self._by_text.get(sql)
        if found is None:
            if len(self._by_text) >= self.limit:
                raise ValueError(f"more than {self.limit} variants of {self.prefix}")
            names: list[str] = []

            def number(match: re.Match) -> str:
                if match.group(1) not in names:
                    names.append(match.group(1))
                return f"${names.index(match.group(1)) + 1}"

            numbered = _NAMED.sub(number, sql).replace("%%", "%")
            statement = Statement(f"{self.prefix}_{len(self._by_text) + 1}", numbered)
            found = self._by_text[sql] = (statement, tuple(names))
        statement, order = found
        return statement, [params[name] for name in order]
