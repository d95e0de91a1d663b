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

from emaild.db.batching import Batcher
from emaild.groups.addresses import ReplyToken
from emaild.groups.store import GroupStore, Member

#: at most this many addresses per query
MAX_TOKENS = 100


class MemberLookups:
    def __init__(self, groups: GroupStore, max_tokens: int = MAX_TOKENS):
        self.groups = groups
        self.batches: Batcher[ReplyToken] = Batcher(self._look_up, max_items=max_tokens)
        #: queries sent, and the addresses in them
        self.queries = 0
        self.tokens = 0

    def by_token(self, token: ReplyToken) -> defer.Deferred:
        """Fires with the L{Member} (current or left) or None, as by_token would."""
        return self.batches.submit(token)

    async def _look_up(self, tokens: list[ReplyToken]) -> list[Member | None]:
        self.queries += 1
        self.tokens += len(tokens)
        return await self.groups.by_tokens(tokens)
