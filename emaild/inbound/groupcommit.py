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
from twisted.logger import Logger
from twisted.python.failure import Failure

from emaild.inbound.records import Received
from emaild.inbound.store import InboundStore

log = Logger()

#: at most this many messages in one transaction
MAX_MESSAGES = 200
#: and at most about this many octets of them (a batch holds at least one)
MAX_OCTETS = 8 * 2**20


class GroupCommit:
    def __init__(self, store: InboundStore, *, max_messages: int = MAX_MESSAGES,
                 max_octets: int = MAX_OCTETS):
        self.store = store
        self.max_messages = max_messages
        self.max_octets = max_octets
        self._waiting: list[tuple[Received, defer.Deferred]] = []
        self._in_flight = False
        #: posts of a refused transaction, to be stored one per transaction
        self._alone: list[tuple[Received, defer.Deferred]] = []
        #: transactions committed (or failed), and the messages in them
        self.transactions = 0
        self.messages = 0

    def receive(self, post: Received) -> defer.Deferred:
        """Store C{post}; fires with its message id once it is committed."""
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((post, d))
        if not self._in_flight:
            self._flush()
        return d

    def _take(self) -> list[tuple[Received, defer.Deferred]]:
        if self._alone:
            return [self._alone.pop(0)]
        size, n = 0, 0
        for post, _ in self._waiting:
            if n and (n >= self.max_messages or size + len(post.raw) > self.max_octets):
                break
            size += len(post.raw)
            n += 1
        batch, self._waiting = self._waiting[:n], self._waiting[n:]
        return batch

    def _flush(self) -> None:
        batch = self._take()
        if not batch:
            self._in_flight = False
            return
        self._in_flight = True
        self.transactions += 1
        self.messages += len(batch)
        d = defer.maybeDeferred(self.store.receive_many, [post for post, _ in batch])

        def done(result):
            if not isinstance(result, Failure) and len(result) != len(batch):
                result = Failure(RuntimeError(f"stored {len(batch)} messages, got "
                                              f"{len(result)} ids back"))
            if isinstance(result, Failure) and len(batch) > 1 and _refused(result):
                # nothing was committed, and one post may be what the
                # database refuses (its group deleted meanwhile...): store
                # each alone, so only that one is answered 451
                self._alone[:0] = batch
                self._flush()
                return
            try:
                for i, (_, waiter) in enumerate(batch):
                    if isinstance(result, Failure):
                        waiter.errback(result)
                    else:
                        waiter.callback(result[i])
            finally:
                self._flush()

        d.addBoth(done).addErrback(lambda f: log.failure("inbound: group commit", f))


def _refused(failure: Failure) -> bool:
    """
    The database refused the statement (a constraint, bad data): it ran on
    a live connection and nothing of it was committed.  Not so for a lost
    connection, whose commit may or may not have happened.
    """
    return bool(failure.check(psycopg2.Error)) and not failure.check(
        psycopg2.OperationalError, psycopg2.InterfaceError)
