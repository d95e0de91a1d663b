"""
PostgreSQL array literals (C{{1,2,3}}, C{{"a",NULL}}) for the list
parameters of batched statements (the outbox's enqueue and record
statements, the click statement and the sessions it starts, the inbound
group commit, the RCPT lookups and the relay's posts).

psycopg2 sends a Python list as C{ARRAY[...]}, one constant per element:
adapting each element costs about 1.5 microseconds here (13 of a click's
microseconds for a batch of seven lists, bench/RESULTS-web.md; the
record statements carry hundreds), and
PostgreSQL then parses every element as an expression.  One literal per
list is one string to adapt and one value to parse.  Pass the result as
C{%s::bigint[]} (C{text[]}, C{float8[]}, C{boolean[]}).  Not for bytea: psycopg2's
own quoting of a list of C{Binary} (libpq's, in C) is faster than a
literal of hex built in Python.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def _int(value: int | None) -> str:
    return "NULL" if value is None else int.__repr__(value)


def int_array(values: Iterable[int | None]) -> str:
    """
    C{{1,-2,NULL}}.  Only ints, and None for NULL (a str or float is a
    TypeError, never text inside the literal).
    """
    return "{" + ",".join(map(_int, values)) + "}"


def _float(value: float) -> str:
    if not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float.__repr__(float(value))


def float_array(values: Iterable[float]) -> str:
    """C{{1764643200.25,1.5e+16}}: finite floats (or ints) only, exactly (repr)."""
    return "{" + ",".join(map(_float, values)) + "}"


def _text(value: str | None) -> str:
    if value is None:
        return "NULL"
    if not isinstance(value, str):
        raise TypeError(f"not a str: {value!r}")
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + value + '"'


def text_array(values: Iterable[str | None]) -> str:
    """
    C{{"a","b",NULL}}: every element double-quoted with its backslashes
    and double quotes escaped, so no content (commas, braces, spaces, the
    word NULL) can change the array's shape; None is NULL.
    """
    return "{" + ",".join(map(_text, values)) + "}"


def bool_array(values: Iterable[bool]) -> str:
    """C{{t,f}}: bools only."""
    out = []
    for value in values:
        if not isinstance(value, bool):
            raise TypeError(f"not a bool: {value!r}")
        out.append("t" if value else "f")
    return "{" + ",".join(out) + "}"

