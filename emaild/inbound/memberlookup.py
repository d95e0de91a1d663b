"""
RCPT lookups of reply addresses, several per query: the addresses named
while one lookup is in flight are looked up together when it is done (with
nothing in flight, at once), so under load the queries per post go down
while a lone RCPT waits for nothing.  Each RCPT gets exactly the answer
L{GroupStore.by_token} would give; a failed query fails exactly the RCPTs
it held (451).
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from emaild.groups.addresses import ReplyToken
from emaild.groups.store import GroupStore

log = Logger()

#: at most this many addresses per query
MAX_TOKENS = 100


class MemberLookups:
    def __init__(self, groups: GroupStore, max_tokens: int = MAX_TOKENS):
        self.groups = groups
        self.max_tokens = max_tokens
        self._waiting: list[tuple[ReplyToken, defer.Deferred]] = []
        self._in_flight = False
        #: queries sent, and the addresses in them
        self.queries = 0
        self.tokens = 0

    def by_token(self, token: ReplyToken) -> defer.Deferred:
        """Fires with the L{Member} (current or left) or None, as by_token would."""
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((token, d))
        if not self._in_flight:
            self._ask()
        return d

    def _ask(self) -> None:
        batch = self._waiting[:self.max_tokens]
        self._waiting = self._waiting[self.max_tokens:]
        if not batch:
            self._in_flight = False
            return
        self._in_flight = True
        self.queries += 1
        self.tokens += len(batch)
        d = defer.ensureDeferred(self.groups.by_tokens([t for t, _ in batch]))

        def done(result):
            if not isinstance(result, Failure) and len(result) != len(batch):
                result = Failure(RuntimeError(f"asked about {len(batch)} addresses, got "
                                              f"{len(result)} answers"))
            try:
                for i, (_, waiter) in enumerate(batch):
                    if isinstance(result, Failure):
                        waiter.errback(result)
                    else:
                        waiter.callback(result[i])
            finally:
                self._ask()

        d.addBoth(done).addErrback(lambda f: log.failure("inbound: member lookup", f))
