"""
The groups part's tables: C{groups}, C{group_members}, C{group_posts},
C{group_relayed_copies} and C{group_visits}.  Other parts write them only
through this module (an LTI launch joins its group with L{ensure_group_txn}
and L{join_group_txn}) and read them in their own statements only through
L{emaild.groups.relations}.

Functions taking a C{cursor} run inside a caller's transaction (the relay
processor records a post in the same transaction that queues its copies).
"""

from __future__ import annotations

import builtins
import datetime
from typing import Sequence

import attrs

from emaild.db.arrays import int_array, text_array
from emaild.db.prepared import Statement
from emaild.groups.addresses import ReplyToken
from emaild.inbound.relations import INBOUND_RECIPIENTS
from emaild.people.relations import COURSES, PEOPLE


@attrs.frozen
class Group:
    id: int
    course_id: int
    name: str
    #: the course's title, or its context_id when it has none
    course_title: str


@attrs.frozen
class Member:
    group_id: int
    person_id: int
    #: their current address (None when the LMS never shared one)
    email: str | None
    display_name: str
    #: set when they left: their reply address no longer works
    left_at: datetime.datetime | None
    secret_hi: int
    secret_lo: int
    #: when they (last) joined
    joined_at: datetime.datetime | None = None

    @property
    def live(self) -> bool:
        return self.left_at is None

    @property
    def token(self) -> ReplyToken:
        return ReplyToken(self.group_id, self.person_id, self.secret_hi, self.secret_lo)


@attrs.frozen
class Thread:
    id: int
    subject: str
    #: display name of who started it
    started_by: str
    posts: int
    last_post_at: datetime.datetime


_GROUP_COLUMNS = "g.id, g.course_id, g.name, coalesce(nullif(c.title, ''), c.context_id)"
_GROUP_FROM = f"groups g JOIN {COURSES} c ON c.id = g.course_id"
_GROUP = f"{_GROUP_COLUMNS} FROM {_GROUP_FROM}"
_MEMBER = ("m.group_id, m.person_id, p.email, p.display_name, m.left_at,"
           " m.reply_secret_hi, m.reply_secret_lo, m.joined_at"
           f" FROM group_members m JOIN {PEOPLE} p ON p.id = m.person_id")

# the statements run for every post and relay batch, prepared (emaild.db.prepared)
_BY_TOKENS = Statement(
    "groups_members_by_tokens",
    f"SELECT {_MEMBER} WHERE (m.group_id, m.person_id) IN"
    " (SELECT * FROM unnest($1::bigint[], $2::bigint[]))")
# each cited id looked up on its own, by the unique Message-ID and by
# (group, original id): two index probes per id, whatever the size of the
# group's history.  Not "group_id = g AND (a OR b)", nor "group_id = g AND
# message_id = ANY(...)": for those the planner (a generic plan, or stale
# statistics) reads every post of the group, 13.6 ms a batch once a group
# had 10,000 posts (pg_stat_statements, bench/inbound.py).
_FIND_POSTS = Statement(
    "groups_find_posts",
    "SELECT p.id, coalesce(p.thread_id, p.id), p.message_id, p.original_message_id"
    " FROM unnest($2::text[]) AS c(cited), LATERAL ("
    "   SELECT id, thread_id, message_id, original_message_id FROM group_posts"
    "   WHERE message_id = c.cited AND group_id = $1"
    "   UNION ALL"
    "   SELECT id, thread_id, message_id, original_message_id FROM group_posts"
    "   WHERE group_id = $1 AND original_message_id = c.cited) p")
_NAME_AND_COURSE = Statement("groups_name_and_course",
                             "SELECT name, course_id FROM groups WHERE id = $1")
_MEMBERS_FOR_RELAY = Statement(
    "groups_members_for_relay",
    f"SELECT {_MEMBER} WHERE m.group_id = $1 AND ($2::boolean OR m.left_at IS NULL)"
    " ORDER BY m.person_id")
_NEXT_POST_IDS = Statement(
    "groups_next_post_ids",
    "SELECT nextval(pg_get_serial_sequence('group_posts', 'id'))"
    " FROM generate_series(1, $1::integer)")
_INSERT_POSTS_WITH_COPIES = Statement(
    "groups_insert_posts_with_copies",
    "WITH v AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[],"
    "   $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[], $10::int[])"
    "   AS v(id, g, a, i, m, t, pm, om, s, n)),"
    " c AS (INSERT INTO group_relayed_copies (message_id, group_id, person_id)"
    "   SELECT * FROM unnest($11::bigint[], $12::bigint[], $13::bigint[])"
    "   ON CONFLICT DO NOTHING RETURNING message_id, group_id, person_id),"
    " p AS (INSERT INTO group_posts (id, group_id, author_id, inbound_id, thread_id,"
    "   message_id, original_message_id, subject, copies)"
    "   SELECT v.id, v.g, v.a, v.i, v.t, v.pm, v.om, v.s,"
    "     (SELECT count(*) FROM c WHERE c.message_id = v.m AND c.group_id = v.g) FROM v"
    "   WHERE v.n = 0 OR EXISTS (SELECT 1 FROM c WHERE c.message_id = v.m AND c.group_id = v.g)"
    "   RETURNING id)"
    " SELECT p.id, ARRAY(SELECT c.person_id FROM c WHERE c.message_id = v.m"
    "   AND c.group_id = v.g) FROM p JOIN v ON v.id = p.id")


class GroupStore:
    def __init__(self, db):
        self.db = db

    async def get(self, group_id: int) -> Group | None:
        rows = await self.db.runQuery(f"SELECT {_GROUP} WHERE g.id = %s", (group_id,))
        return Group(*rows[0]) if rows else None

    async def find(self, course_id: int, name: str) -> Group | None:
        rows = await self.db.runQuery(
            f"SELECT {_GROUP} WHERE g.course_id = %s AND g.name = %s", (course_id, name))
        return Group(*rows[0]) if rows else None

    async def list(self, course_id: int | None = None) -> builtins.list[tuple[Group, int]]:
        """
        Groups (of one course, or all) with their number of current members.
        """
        rows = await self.db.runQuery(
            f"SELECT {_GROUP_COLUMNS},"
            "  (SELECT count(*) FROM group_members m WHERE m.group_id = g.id AND m.left_at IS NULL)"
            f" FROM {_GROUP_FROM}"
            " WHERE %s::bigint IS NULL OR g.course_id = %s ORDER BY g.course_id, g.name",
            (course_id, course_id))
        return [(Group(*row[:4]), row[4]) for row in rows]

    async def members(self, group_id: int, include_left: bool = False) -> builtins.list[Member]:
        rows = await self.db.runQuery(
            f"SELECT {_MEMBER} WHERE m.group_id = %s AND (%s OR m.left_at IS NULL)"
            " ORDER BY lower(p.display_name), p.id", (group_id, include_left))
        return [Member(*row) for row in rows]

    async def member(self, group_id: int, person_id: int) -> Member | None:
        """
        The membership, current or left; None if they never belonged.
        """
        rows = await self.db.runQuery(
            f"SELECT {_MEMBER} WHERE m.group_id = %s AND m.person_id = %s",
            (group_id, person_id))
        return Member(*rows[0]) if rows else None

    async def by_token(self, token: ReplyToken) -> Member | None:
        """
        The membership a decoded reply address names, if its secret matches
        (current or left: the caller tells a dead address from a wrong one).
        """
        member = await self.member(token.group_id, token.person_id)
        if member is None or (member.secret_hi, member.secret_lo) != (token.secret_hi,
                                                                      token.secret_lo):
            return None
        return member

    async def by_tokens(self, tokens: Sequence[ReplyToken]) -> builtins.list[Member | None]:
        """L{by_token} for several tokens, in one query (in their order)."""
        rows = await self.db.run_prepared(_BY_TOKENS, (
            int_array(t.group_id for t in tokens), int_array(t.person_id for t in tokens)))
        found = {(m.group_id, m.person_id): m for m in (Member(*row) for row in rows)}
        members: builtins.list[Member | None] = []
        for token in tokens:
            member = found.get((token.group_id, token.person_id))
            secret_matches = member is not None and (member.secret_hi, member.secret_lo) == (
                token.secret_hi, token.secret_lo)
            members.append(member if secret_matches else None)
        return members

    async def leave(self, group_id: int, person_id: int) -> bool:
        """
        End a membership; its reply address stops working.  False if they
        were not a current member.
        """
        rows = await self.db.runQuery(
            "UPDATE group_members SET left_at = now()"
            " WHERE group_id = %s AND person_id = %s AND left_at IS NULL RETURNING 1",
            (group_id, person_id))
        return bool(rows)

    async def record_visit(self, group_id: int, person_id: int) -> None:
        await self.db.runOperation(
            "INSERT INTO group_visits (group_id, person_id) VALUES (%s, %s)",
            (group_id, person_id))

    async def quiet_members(self, group_id: int, actor_id: int, online_window: float
                            ) -> builtins.list[int]:
        """
        The other current members of the group who have an address and
        have not visited a group page within C{online_window} seconds (the
        group-activity notifier's candidates).
        """
        rows = await self.db.runQuery(
            f"SELECT m.person_id FROM group_members m JOIN {PEOPLE} p ON p.id = m.person_id"
            " WHERE m.group_id = %(group)s AND m.left_at IS NULL AND m.person_id <> %(actor)s"
            "   AND coalesce(p.email, '') <> ''"
            "   AND NOT EXISTS (SELECT 1 FROM group_visits v WHERE v.person_id = m.person_id"
            "       AND v.at > now() - make_interval(secs => %(online)s))"
            " ORDER BY m.person_id",
            {"group": group_id, "actor": actor_id, "online": float(online_window)})
        return [row[0] for row in rows]

    async def threads(self, group_id: int, limit: int = 20) -> builtins.list[Thread]:
        """
        The most recently active threads of the group.
        """
        rows = await self.db.runQuery(
            "SELECT t.id, t.subject, coalesce(p.display_name, ''), s.posts, s.last_at"
            " FROM (SELECT coalesce(thread_id, id) AS tid, count(*) AS posts,"
            "        max(created_at) AS last_at"
            "       FROM group_posts WHERE group_id = %s GROUP BY 1) s"
            " JOIN group_posts t ON t.id = s.tid"
            f" LEFT JOIN {PEOPLE} p ON p.id = t.author_id"
            " ORDER BY s.last_at DESC, t.id DESC LIMIT %s", (group_id, limit))
        return [Thread(*row) for row in rows]


# -- inside a caller's transaction --------------------------------------------
async def find_posts_txn(cursor, group_id: int, message_ids: Sequence[str]) -> dict[str, tuple[int, int, str]]:
    """
    Posts of the group that a message cites, by any id it may cite: our
    Message-ID or the author's original one.  Maps each cited id that is
    known to (post id, thread id, our Message-ID).
    """
    if not message_ids:
        return {}
    await cursor.execute_prepared(_FIND_POSTS, (group_id, text_array(message_ids)))
    found: dict[str, tuple[int, int, str]] = {}
    for post_id, thread_id, ours, original in cursor.fetchall():
        for key in (ours, original):
            if key:
                found[key] = (post_id, thread_id, ours)
    return found


async def name_and_course_txn(cursor, group_id: int) -> tuple[str, int] | None:
    await cursor.execute_prepared(_NAME_AND_COURSE, (group_id,))
    row = cursor.fetchone()
    return tuple(row) if row else None


async def members_for_relay_txn(cursor, group_id: int, include_left: bool = False) -> builtins.list[Member]:
    await cursor.execute_prepared(_MEMBERS_FOR_RELAY, (group_id, include_left))
    return [Member(*row) for row in cursor.fetchall()]


async def post_of_message_txn(cursor, group_id: int, message_id: int) -> int | None:
    """
    The post already made in the group from received message C{message_id}
    (through any of its recipient rows), if any.
    """
    await cursor.execute(
        f"SELECT p.id FROM group_posts p JOIN {INBOUND_RECIPIENTS} r ON r.id = p.inbound_id"
        " WHERE p.group_id = %s AND r.message_id = %s ORDER BY p.id LIMIT 1",
        (group_id, message_id))
    row = cursor.fetchone()
    return row[0] if row else None


async def insert_post_with_copies_txn(cursor, *, group_id: int, author_id: int | None,
                                  inbound_id: int, message_id: int, thread_id: int | None,
                                  post_message_id: str, original_message_id: str | None,
                                  subject: str, person_ids: Sequence[int]
                                  ) -> tuple[int | None, set[int]]:
    """
    Record that each of C{person_ids} gets a copy of received message
    C{message_id} (its row C{inbound_id}) in the group, and the post with
    the number of copies, in one statement.  Returns (post id, the members
    not recorded before: the only ones to send to); no post (None) when
    every one of them had a copy already.  Concurrent claims for the same
    member wait for each other, and only one wins.
    """
    await cursor.execute(
        "WITH c AS (INSERT INTO group_relayed_copies (message_id, group_id, person_id)"
        "   SELECT %s, %s, p FROM unnest(%s::bigint[]) AS p"
        "   ON CONFLICT DO NOTHING RETURNING person_id),"
        " p AS (INSERT INTO group_posts (group_id, author_id, inbound_id, thread_id, message_id,"
        "   original_message_id, subject, copies)"
        "   SELECT %s, %s, %s, %s, %s, %s, %s, (SELECT count(*) FROM c)"
        "   WHERE cardinality(%s::bigint[]) = 0 OR EXISTS (SELECT 1 FROM c) RETURNING id)"
        " SELECT (SELECT id FROM p), ARRAY(SELECT person_id FROM c)",
        (message_id, group_id, list(person_ids), group_id, author_id, inbound_id, thread_id,
         post_message_id, original_message_id, subject, list(person_ids)))
    post_id, claimed = cursor.fetchone()
    return post_id, set(claimed)


@attrs.frozen
class NewPost:
    """A post for L{insert_posts_with_copies_txn}, its id taken beforehand."""

    post_id: int
    group_id: int
    author_id: int | None
    #: the received row it is made from, and that row's message
    inbound_id: int
    message_id: int
    thread_id: int | None
    post_message_id: str
    original_message_id: str | None
    subject: str
    person_ids: Sequence[int]


async def next_post_ids_txn(cursor, n: int) -> list[int]:
    """C{n} unused post ids (for L{NewPost}; those not used are gaps)."""
    await cursor.execute_prepared(_NEXT_POST_IDS, (n,))
    return [row[0] for row in cursor.fetchall()]


async def insert_posts_with_copies_txn(cursor, posts: Sequence[NewPost]) -> dict[int, set[int]]:
    """
    L{insert_post_with_copies_txn} for many posts in one statement (a post
    may name another of them as its thread).  Returns {post id: the members
    not recorded before} for the posts made; a post is not made when every
    one of its members had a copy already.  At most one post per (message,
    group).
    """
    if len({(p.message_id, p.group_id) for p in posts}) < len(posts):
        raise ValueError("two posts of one message to one group")
    copies = [(p.message_id, p.group_id, person) for p in posts for person in p.person_ids]
    await cursor.execute_prepared(
        _INSERT_POSTS_WITH_COPIES,
        (int_array(p.post_id for p in posts), int_array(p.group_id for p in posts),
         int_array(p.author_id for p in posts), int_array(p.inbound_id for p in posts),
         int_array(p.message_id for p in posts), int_array(p.thread_id for p in posts),
         text_array(p.post_message_id for p in posts),
         text_array(p.original_message_id for p in posts), text_array(p.subject for p in posts),
         int_array(len(p.person_ids) for p in posts),
         int_array(c[0] for c in copies), int_array(c[1] for c in copies),
         int_array(c[2] for c in copies)))
    return {post_id: set(claimed) for post_id, claimed in cursor.fetchall()}


async def ensure_group_txn(cursor, course_id: int, name: str, report: bool = False):
    """
    The group's id (with C{report}: and whether it was made now).
    """
    await cursor.execute(
        "INSERT INTO groups (course_id, name) VALUES (%s, %s)"
        " ON CONFLICT (course_id, name) DO NOTHING RETURNING id", (course_id, name))
    row = cursor.fetchone()
    created = row is not None
    if row is None:
        await cursor.execute("SELECT id FROM groups WHERE course_id = %s AND name = %s",
                             (course_id, name))
        row = cursor.fetchone()
    return (row[0], created) if report else row[0]


async def join_group_txn(cursor, group_id: int, person_id: int) -> None:
    await cursor.execute(
        "INSERT INTO group_members (group_id, person_id) VALUES (%s, %s)"
        " ON CONFLICT (group_id, person_id) DO UPDATE SET left_at = NULL, joined_at = now(),"
        # a new reply address: the one they had before leaving stays dead
        "   reply_secret_hi = emaild_random32(), reply_secret_lo = emaild_random32()"
        " WHERE group_members.left_at IS NOT NULL", (group_id, person_id))


async def rejoin_group_txn(cursor, group_id: int, person_id: int) -> bool:
    """
    Make the person a current member of the group unless they are one
    already; True if they joined (or rejoined) now.
    """
    await cursor.execute(
        "SELECT left_at IS NULL FROM group_members WHERE group_id = %s AND person_id = %s",
        (group_id, person_id))
    row = cursor.fetchone()
    if row is not None and row[0]:
        return False
    await join_group_txn(cursor, group_id, person_id)
    return True
