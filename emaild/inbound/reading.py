"""
Reading posts for the group relay: parse, decide whether a post is one to
relay, and scrub it, as a pure function of its bytes and the group's
addresses (no database, no reactor), for all the posts of a batch at once.
"""

from __future__ import annotations

import functools
import traceback
from email.utils import getaddresses
from typing import Mapping, Sequence

import attrs

from emaild.inbound.classify import not_relayable, parse_message, parsed_values
from emaild.inbound.rewrite import Prepared, prepare, scrub_map


@attrs.frozen
class PostToRead:
    raw: bytes
    mail_from: str
    #: our loop header's value (mail that carries it is our own)
    loop_value: str
    author_name: str
    #: key into the (address, name) lists of the groups' members
    group_id: int


@attrs.frozen
class ReadPost:
    """
    What reading a post came to: C{prepared} for a post to relay, else
    C{ignored} (why it is not relayed) or C{error} (it could not be read).
    """

    prepared: Prepared | None = None
    ignored: str | None = None
    error: str | None = None


def read_post(item: PostToRead, members: Sequence[tuple[str, str]]) -> ReadPost:
    message = parse_message(item.raw)
    reason = not_relayable(message, item.mail_from, item.loop_value)
    if reason:
        return ReadPost(ignored=f"not relayed: {reason}")
    # every address that could identify anyone: members (also former ones,
    # who may be quoted), the envelope sender and the From header
    senders = [item.mail_from, *_from_addresses(tuple(parsed_values(message, "From")))]
    # the members' part is remembered for the group (see scrub_map); the
    # senders' entries come after it, as in one map of members + senders
    scrub = scrub_map(members)
    scrub.update(scrub_map([(a, item.author_name) for a in senders if a]))
    return ReadPost(prepared=prepare(message, scrub, author=item.author_name))


@functools.lru_cache(maxsize=1024)
def _from_addresses(values: tuple[str, ...]) -> tuple[str, ...]:
    """
    The addresses in From values, remembered: a member's posts carry the
    same From again and again, and parsing it is costly.
    """
    return tuple(a for _, a in getaddresses(list(values)) if "@" in a)


def read_posts(items: Sequence[PostToRead],
               members: Mapping[int, Sequence[tuple[str, str]]]) -> list[ReadPost]:
    """L{read_post} for each item; one that raises is an C{error}, the rest go on."""
    results = []
    for item in items:
        try:
            results.append(read_post(item, members[item.group_id]))
        except Exception as e:  # noqa: BLE001 (reported for that row alone)
            results.append(ReadPost(error=f"{e!r}\n{traceback.format_exc(limit=8)}"))
    return results
