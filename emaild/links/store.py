"""
The links part's table: C{links}.
"""

from __future__ import annotations

from typing import Sequence

import attrs

from emaild.db.arrays import int_array
from emaild.db.prepared import Variants
from emaild.links.tokens import TokenParts, new_secret


@attrs.frozen
class LinkRow:
    id: int
    person_id: int
    purpose: str
    target: str
    secret_hi: int
    secret_lo: int
    #: seconds since the epoch
    expires_at: float
    uses: int = 0

    @property
    def parts(self) -> TokenParts:
        return TokenParts(self.id, self.secret_hi, self.secret_lo)


@attrs.frozen
class LinkRequest:
    person_id: int
    purpose: str
    target: str
    #: seconds the link is valid for
    ttl: float


_COLUMNS = ("id, person_id, purpose, target, secret_hi, secret_lo,"
            " extract(epoch FROM expires_at)::float8, uses")
_JOINED_COLUMNS = ("l.id, l.person_id, l.purpose, l.target, l.secret_hi, l.secret_lo,"
                   " extract(epoch FROM l.expires_at)::float8, l.uses")


#: the click statement, one per kind of caller (what it also does: start a
#: session; whether it waits for the disk), prepared (emaild.db.prepared)
_USE_MANY = Variants("links_use_many")


class LinkStore:
    def __init__(self, db):
        self.db = db

    async def mint_many(self, requests: Sequence[LinkRequest], now: float):
        """
        One link row per request, in order: an existing row for the same
        (person, purpose, target) that stays valid for at least half its
        lifetime is reused (so a weekly mail to 10,000 people does not add
        10,000 rows a week, and no mail carries a link about to expire);
        otherwise a new row with a fresh 64-bit secret.
        """
        return await self.db.transaction(self._mint_many, list(requests), now)

    async def _mint_many(self, cursor, requests, now):
        if not requests:
            return []
        keys = sorted({(r.person_id, r.purpose, r.target, r.ttl) for r in requests})
        await cursor.execute(
            f"SELECT DISTINCT ON (l.person_id, l.purpose, l.target) {_JOINED_COLUMNS}"
            " FROM links l JOIN unnest(%s::bigint[], %s::text[], %s::text[], %s::float8[])"
            "   AS r(person_id, purpose, target, ttl)"
            "   ON l.person_id = r.person_id AND l.purpose = r.purpose AND l.target = r.target"
            " WHERE l.expires_at > to_timestamp(%s + r.ttl / 2)"
            " ORDER BY l.person_id, l.purpose, l.target, l.expires_at DESC",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
             [k[3] for k in keys], now),
        )
        found = {(row[1], row[2], row[3]): LinkRow(*row) for row in cursor.fetchall()}
        missing = [k for k in keys if (k[0], k[1], k[2]) not in found]
        if missing:
            secrets = [new_secret() for _ in missing]
            await cursor.execute(
                "INSERT INTO links (person_id, purpose, target, secret_hi, secret_lo, expires_at)"
                " SELECT p, u, t, h, l, to_timestamp(%s + ttl)"
                " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::bigint[],"
                "   %s::float8[]) AS v(p, u, t, h, l, ttl)"
                " RETURNING " + _COLUMNS,
                (now, [k[0] for k in missing], [k[1] for k in missing], [k[2] for k in missing],
                 [s[0] for s in secrets], [s[1] for s in secrets], [k[3] for k in missing]),
            )
            for row in cursor.fetchall():
                found[(row[1], row[2], row[3])] = LinkRow(*row)
        return [found[(r.person_id, r.purpose, r.target)] for r in requests]

    async def get(self, link_id: int) -> LinkRow | None:
        rows = await self.db.runQuery(f"SELECT {_COLUMNS} FROM links WHERE id = %s", (link_id,))
        return LinkRow(*rows[0]) if rows else None

    async def record_use(self, link_id: int) -> None:
        await self.db.runOperation(
            "UPDATE links SET uses = uses + 1, last_used_at = now() WHERE id = %s", (link_id,))

    async def use_many(self, clicks: Sequence[TokenParts], purpose: str, now: float,
                       also: tuple[str, dict] = ("", {}),
                       durable: bool = True) -> list[tuple[LinkRow | None, bool]]:
        """
        Look up the row of each of C{clicks} and, in the same statement,
        count a use for each click of this purpose and secret that is still
        valid at C{now} (one round trip, one commit for them all): for each
        click, in order, the row as it was before and whether this click
        used it.  C{also}'s CTEs may read
        C{link_used} (C{n}, the click's 1-based position in C{clicks}; C{id};
        C{person_id}: one row per usable click).  A link clicked k times
        counts k uses.  Rows are locked in id order, so that two such
        statements at once rarely wait for each other in a cycle (the
        caller retries if PostgreSQL reports a deadlock).

        C{durable=False}: the statement commits asynchronously
        (C{synchronous_commit = off} for this transaction only): its
        changes are visible to every later statement at once, but it does
        not wait for its WAL to reach the disk, so a crash of PostgreSQL
        (not of emaild) within about 0.6 s (three C{wal_writer_delay}s)
        loses it.  Only for what a learner can redo by clicking again.
        """
        ctes, params = also
        statement, values = _USE_MANY.bind(
            "WITH click AS (SELECT * FROM unnest(%(link_ids)s::bigint[],"
            "   %(link_secret_his)s::bigint[], %(link_secret_los)s::bigint[])"
            "   WITH ORDINALITY AS c(link_id, secret_hi, secret_lo, n)),"
            " link AS (SELECT c.n, c.secret_hi AS given_hi, c.secret_lo AS given_lo, l.*"
            "   FROM click c JOIN links l ON l.id = c.link_id),"
            " link_used AS (SELECT n, id, person_id FROM link WHERE purpose = %(link_purpose)s"
            "   AND secret_hi = given_hi AND secret_lo = given_lo"
            "   AND expires_at > to_timestamp(%(link_now)s)),"
            " link_counted AS (UPDATE links SET uses = uses + u.clicks, last_used_at = now()"
            "   FROM (SELECT id, count(*) AS clicks FROM link_used GROUP BY id ORDER BY id) u"
            "   WHERE links.id = u.id)"
            + (", " + ctes if ctes else "") +
            " SELECT n, " + _COLUMNS + ", n IN (SELECT n FROM link_used) FROM link"
            # a one-time filter, evaluated before any row: it sets the
            # commit mode of this statement's own (implicit) transaction
            + ("" if durable else
               " WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL"),
            # each list as one array literal: one value to adapt and parse
            {**params, "link_ids": int_array([p.link_id for p in clicks]),
             "link_secret_his": int_array([p.secret_hi for p in clicks]),
             "link_secret_los": int_array([p.secret_lo for p in clicks]),
             "link_purpose": purpose, "link_now": now})
        rows = await self.db.run_prepared(statement, values)
        found: dict[int, tuple[LinkRow, bool]] = {}
        for n, *row, used in rows:
            found[n] = (LinkRow(*row), used)
        return [found.get(n, (None, False)) for n in range(1, len(clicks) + 1)]
