"""
Group commit for received messages: the messages whose DATA ends while
the previous store is in flight are stored together, in one statement
(one transaction, one commit), when it is done.  With nothing in flight a
message is stored at once, so a lone message waits for nothing; under load
the commits, and the statements per message, go down with the load.

Each message's Deferred fires only after the commit that holds it, so the
SMTP server still answers 250 only for what is committed; when a commit
fails, exactly the messages of that transaction get the failure (451).
When the database refuses a transaction of several messages (a constraint,
bad data: nothing was committed), each is stored again alone, so that one
refused message does not take the others with it.
"""

from __future__ import annotations

import psycopg2
from twisted.internet import defer
from twisted.python.failure import Failure

from emaild.db.batching import Batcher
from emaild.inbound.records import Received
from emaild.inbound.store import InboundStore

#: at most this many messages in one transaction
MAX_MESSAGES = 200
#: and at most about this many octets of them (a batch holds at least one)
MAX_OCTETS = 8 * 2**20


class GroupCommit:
    def __init__(self, store: InboundStore, *, max_messages: int = MAX_MESSAGES,
                 max_octets: int = MAX_OCTETS, reactor=None):
        """
        @param reactor: given, the messages whose DATA ended in one reactor
            turn share a transaction even with none in flight (see L{Batcher})
        """
        self.store = store
        self.batches: Batcher[Received] = Batcher(
            self._store, max_items=max_messages, size=lambda post: len(post.raw),
            max_size=max_octets, reactor=reactor)
        #: transactions committed (or failed), and the messages in them
        self.transactions = 0
        self.messages = 0

    def receive(self, post: Received) -> defer.Deferred:
        """Store C{post}; fires with its message id once it is committed."""
        return self.batches.submit(post)

    async def _store(self, posts: list[Received]) -> list:
        self.transactions += 1
        self.messages += len(posts)
        try:
            return await self.store.receive_many(posts)
        except Exception:
            if len(posts) == 1 or not _refused(Failure()):
                raise
        # nothing was committed, and one post may be what the database
        # refuses (its group deleted meanwhile...): store each alone, so
        # only that one is answered 451
        ids: list = []
        for post in posts:
            try:
                ids.extend(await self._store([post]))
            except Exception:
                ids.append(Failure())
        return ids


def _refused(failure: Failure) -> bool:
    """
    The database refused the statement (a constraint, bad data): it ran on
    a live connection and nothing of it was committed.  Not so for a lost
    connection, whose commit may or may not have happened.
    """
    return bool(failure.check(psycopg2.Error)) and not failure.check(
        psycopg2.OperationalError, psycopg2.InterfaceError)
