"""
The relay processor: works through stored inbound recipients, a batch per
transaction (L{process_rows}), and finishes each in the transaction that
does its work: every post of a batch is read first, then the batch's
posts and their copies are queued in a few statements, whatever its size.

- a member's reply address: the post is re-sent to every other current
  member through the outbox (rate limit, retries and records apply), each
  copy from and to that recipient's own reply address, with every member's
  real address scrubbed out and threading mapped to our own Message-IDs;
- an unsubscribe address: the person it names is unsubscribed;
- the bounce address of one of our messages: the bounce is recorded, and an
  address with C{[groups] hard_bounce_limit} hard bounces is suppressed.

Auto-replies, bounces sent to reply addresses, loops and other lists' mail
are recorded as C{ignored} with the reason, never relayed.  Each member gets
at most one copy of a received message per group (a unique row per copy in
the database), however often the message was addressed or processed.
"""

from __future__ import annotations

import secrets

import attrs
import psycopg2
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from emaild.db.database import DatabaseUnavailable
from emaild.groups.addresses import ReplyAddresses
from emaild.groups.store import (
    NewPost,
    find_posts_txn,
    insert_posts_with_copies_txn,
    members_for_relay_txn,
    name_and_course_txn,
    next_post_ids_txn,
    post_of_message_txn,
)
from emaild.inbound.addresspatterns import cased_characters
from emaild.inbound.bounces import record_bounce, unsubscribe_by_mail
from emaild.inbound.copies import GroupCopies, PostPlan
from emaild.inbound.inflow import InFlow
from emaild.inbound.reading import PostToRead, read_posts
from emaild.inbound.records import Outcome, Pending
from emaild.inbound.rewrite import ANONYMOUS_NAME
from emaild.inbound.store import (
    BOUNCE,
    INBOUND_CHANNEL,
    RELAY,
    RETRY,
    UNSUBSCRIBE,
    InboundStore,
    process_rows,
)
from emaild.metrics import Metrics

log = Logger()

#: a row whose processing raised this often is marked failed
MAX_ATTEMPTS = 3
#: rows per transaction, and the copies after which a batch takes no more
#: rows (a post to a big group queues hundreds in one go)
BATCH_ROWS = 128
BATCH_COPIES = 2000
ANONYMOUS = ANONYMOUS_NAME


class PostUnreadable(Exception):
    """Reading a post raised; the message has the traceback."""


class PlannedPostNotMade(Exception):
    """
    A post planned in a batch was not made, and a later row of the batch
    relied on it: the batch is done again one row at a time.
    """


@attrs.frozen
class _Post:
    """A post read and scrubbed, waiting for its turn in the batch."""

    author: object
    prepared: object

    @property
    def ids(self) -> list[str]:
        p = self.prepared
        return p.in_reply_to + p.references + ([p.original_message_id]
                                               if p.original_message_id else [])


def _unique(items):
    return list(dict.fromkeys(items))


class RelayProcessor(service.Service):
    def __init__(self, reactor, config, store: InboundStore, addresses: ReplyAddresses,
                 links, outbox, metrics: Metrics | None = None, inflow: InFlow | None = None):
        self.reactor = reactor
        self.metrics = metrics if metrics is not None else Metrics()
        self.config = config
        self.store = store
        self.addresses = addresses
        self.links = links
        self.outbox = outbox
        #: told how many rows wait after each batch (it slows the server)
        self.inflow = inflow
        self.domain = config["smtp"]["relay_domain"]
        self.bounce_limit = config["groups"]["hard_bounce_limit"]
        self.poll_interval = config["relay"]["poll_interval"]
        self._poll = task.LoopingCall(self.wake)
        self._poll.clock = reactor
        self._draining: defer.Deferred | None = None
        self._again = False
        #: what the rows of one batch share (see _before_batch)
        self._groups: dict[int, tuple] = {}
        #: makes and queues the copies of each batch's posts
        self.copies = GroupCopies(config, addresses, links)
        self._read: dict[int, object] = {}
        self._found: dict[int, dict] = {}
        #: rows per transaction, and the copies after which a batch takes
        #: no more rows
        self.batch_rows = BATCH_ROWS
        self.max_copies = BATCH_COPIES

    # -- service ---------------------------------------------------------------
    name = "relay"
    starting: defer.Deferred | None = None

    def startService(self):  # noqa: N802
        super().startService()
        cased_characters()  # the scrubber's table, found now rather than in a batch
        self._poll.start(self.poll_interval, now=True)
        #: fires once LISTEN is set up (it never fails: polling is the fallback)
        self.starting = defer.ensureDeferred(self._listen())

    #: LISTEN is set up: new rows wake the processor (until then it only
    #: stops looking for rows once a batch finds none)
    listening = False

    async def _listen(self):
        try:
            await self.store.db.listen(INBOUND_CHANNEL, lambda _payload: self.wake(),
                                       on_recovered=self.wake)
            self.listening = True
        except Exception:
            log.failure("Cannot LISTEN for inbound mail; relying on polling")

    def stopService(self):  # noqa: N802
        super().stopService()
        if self._poll.running:
            self._poll.stop()
        # finish the batch in hand (its transaction commits or rolls back
        # whole), and let LISTEN be set up before the database closes
        return defer.DeferredList([d for d in (self._draining, self.starting) if d is not None])

    def wake(self) -> None:
        """
        Process everything waiting (called on NOTIFY and on every poll).
        """
        if self._draining is not None:
            self._again = True
            return
        self._draining = defer.ensureDeferred(self._drain())
        self._draining.addBoth(self._drained)

    def _drained(self, result):
        self._draining = None
        if self._again and self.running:
            self._again = False
            self.wake()
        return None

    async def _drain(self) -> None:
        # batch after batch while rows wait: each batch costs a few
        # statements whatever its size, so the processor keeps up with a
        # server accepting at full rate in the same reactor
        while self.running:
            try:
                results, waiting = await process_rows(
                    self.store, self._work, limit=self.batch_rows, max_attempts=MAX_ATTEMPTS)
            except (DatabaseUnavailable, psycopg2.OperationalError, psycopg2.InterfaceError) as e:
                log.warn("Relay processor paused, database unavailable: {e}", e=e)
                return  # the next poll (or the recovery NOTIFY) tries again
            except Exception:
                log.failure("Relay processor could not process a batch")
                return
            if self.inflow is not None:
                self.inflow.update(waiting - len(results))
            if not results:
                return
            for pending, outcome in results:
                if outcome.failure is not None:
                    log.failure("Processing inbound recipient {id} failed ({state})",
                                outcome.failure, id=pending.id, state=outcome.state)
            self.metrics.relay_copies.inc(sum(o.copies for _, o in results))
            if self.listening and 0 < waiting <= len(results) < self.batch_rows:
                # the batch took every row that was waiting and finished
                # each: no need to look again at once (an empty batch is a
                # transaction too).  Rows committed since were not in its
                # snapshot; their NOTIFY, sent on their commit, came during
                # this batch (wake() then drains again once this one ends)
                # or will come (after an outage of the listening connection,
                # its recovery wakes the processor); the poll is the fallback.
                return

    async def _handle(self, cursor, pending: Pending) -> Outcome:
        """The work of one row (a post goes through L{_work} alone); an unreadable post raises."""
        if pending.purpose == RELAY:
            ((_, outcome),) = await self._work(cursor, [pending])
            if outcome.state == RETRY:
                raise PostUnreadable(outcome.reason)
            return outcome
        if pending.purpose == UNSUBSCRIBE:
            return Outcome(*await unsubscribe_by_mail(self.links, self.outbox, pending))
        if pending.purpose == BOUNCE:
            return Outcome(*await record_bounce(cursor, pending, self.bounce_limit))
        return Outcome("failed", f"unknown purpose {pending.purpose!r}")

    # -- the group relay ---------------------------------------------------------
    async def _before_batch(self, cursor, batch: list[Pending]) -> int:
        """
        Read the posts of the batch first (parse, check, scrub: see
        L{read_posts}), then look up the posts they cite in one query per
        group rather than one per post.  Only rows up to the one whose
        copies reach C{max_copies} are read; returns how many that is.
        """
        self._groups, self._read, self._found = {}, {}, {}
        waiting: list[tuple[Pending, object]] = []
        items, members = [], {}
        copies = 0
        for taken, pending in enumerate(batch):
            if copies >= self.max_copies:
                batch = batch[:taken]
                break
            if pending.purpose != RELAY:
                continue
            group = await self._group(cursor, pending.group_id)
            author = None if group is None else next(
                (m for m in group[2] if m.person_id == pending.person_id), None)
            if group is None:
                self._read[pending.id] = Outcome("ignored", "the group no longer exists")
            elif author is None:
                self._read[pending.id] = Outcome(
                    "ignored", "the sender is no longer a member of the group")
            else:
                members.setdefault(pending.group_id, tuple(
                    (m.email, m.display_name or ANONYMOUS) for m in group[2] if m.email))
                items.append(PostToRead(pending.raw, pending.mail_from, self.domain,
                                        author.display_name or ANONYMOUS, pending.group_id))
                waiting.append((pending, author))
                # at most this many: its reading may find it is not to be relayed
                copies += sum(1 for m in group[2] if m.live and m.email
                              and m.person_id != author.person_id)
        cited: dict[int, set[str]] = {}
        for (pending, author), read in zip(waiting, read_posts(items, members)):
            if read.error is not None:
                self._read[pending.id] = PostUnreadable(read.error)
            elif read.ignored is not None:
                self._read[pending.id] = Outcome("ignored", read.ignored)
            else:
                post = self._read[pending.id] = _Post(author, read.prepared)
                cited.setdefault(pending.group_id, set()).update(post.ids)
        for group_id, ids in cited.items():
            self._found[group_id] = await find_posts_txn(cursor, group_id, sorted(ids))
        return len(batch)

    async def _work(self, cursor, batch: list[Pending]) -> list[tuple[Pending, Outcome]]:
        """
        The work of a batch of rows in its transaction (see
        L{process_rows}): every post read first, then the posts and their
        copies each queued in one statement for the whole batch.  Rows are
        taken in order until their copies reach C{max_copies}.
        """
        taken: list[tuple[Pending, Outcome | None]] = []
        posts: list[Pending] = []
        for pending in batch[:await self._before_batch(cursor, batch)]:
            if pending.purpose == RELAY:
                posts.append(pending)
                taken.append((pending, None))
            else:
                taken.append((pending, await self._handle(cursor, pending)))
        relayed = iter(await self._relay(cursor, posts) if posts else ())
        return [(p, o if o is not None else next(relayed)) for p, o in taken]

    async def _relay(self, cursor, rows: list[Pending]) -> list[Outcome]:
        """
        Relay the posts of C{rows} (read by L{_before_batch}), in order: a
        post counts as found for the posts after it (threading, duplicates).
        """
        ids = iter(await next_post_ids_txn(cursor, len(rows)))
        outcomes: dict[int, Outcome] = {}
        plans: list[PostPlan] = []
        #: posts planned in this batch: (group, received message) -> post
        #: id, and group -> cited id -> (post id, thread id, our Message-ID)
        made: dict[tuple[int, int], int] = {}
        in_batch: dict[int, dict[str, tuple[int, int, str]]] = {}
        #: planned posts that an outcome relies on being made
        relies: set[int] = set()
        for pending in rows:
            read = self._read.pop(pending.id)
            if isinstance(read, PostUnreadable):
                outcomes[pending.id] = Outcome(RETRY, f"internal error: {read!r}"[:500],
                                               failure=Failure(read))
                continue
            if isinstance(read, Outcome):
                outcomes[pending.id] = read
                continue
            prepared, group_id = read.prepared, pending.group_id
            earlier = made.get((group_id, pending.message_id))
            relies.update([earlier] if earlier else [])
            if earlier is None and pending.shared:
                earlier = await post_of_message_txn(cursor, group_id, pending.message_id)
            if earlier is not None:
                outcomes[pending.id] = Outcome(
                    "ignored", f"a copy of post {earlier} (the message named this "
                               "reply address more than once)")
                continue
            planned = in_batch.get(group_id, {})
            found = {**self._found.get(group_id, {}), **planned}
            cited = [i for i in read.ids if i in planned]
            relies.update(x for i in cited for x in planned[i][:2] if x in made.values())
            original = prepared.original_message_id
            if original and original in found:
                outcomes[pending.id] = Outcome(
                    "ignored", f"a copy of post {found[original][0]} (delivered twice)")
                continue
            # replies cite our ids (or the author's own, for their earlier
            # posts); ids we never issued say nothing to the others: dropped
            parent_key = next((i for i in prepared.in_reply_to if i in found), None) or next(
                (i for i in reversed(prepared.references) if i in found), None)
            in_reply_to = _unique(found[i][2] for i in prepared.in_reply_to if i in found)
            references = _unique([found[i][2] for i in prepared.references if i in found]
                                 + in_reply_to)
            thread_id = found[parent_key][1] if parent_key else None
            message_id = f"<{secrets.token_hex(12)}@{self.domain}>"
            group_name, course_id, members = self._groups[group_id]
            candidates = [m for m in members
                          if m.live and m.email and m.person_id != read.author.person_id]
            post_id = next(ids)
            post = NewPost(post_id, group_id, read.author.person_id, pending.id,
                           pending.message_id, thread_id, message_id, original,
                           prepared.subject, [m.person_id for m in candidates])
            plans.append(PostPlan(pending, prepared, group_name, course_id, candidates,
                                  in_reply_to, references, post))
            made[(group_id, pending.message_id)] = post_id
            for key in filter(None, (message_id, original)):
                in_batch.setdefault(group_id, {})[key] = (post_id, thread_id or post_id,
                                                          message_id)
        # the database's word on who has not had each message yet
        claimed = await insert_posts_with_copies_txn(cursor, [p.post for p in plans]) \
            if plans else {}
        if not relies <= claimed.keys():
            # a post another row relied on was not made (its copies were
            # all made already, by another process): rows one at a time
            raise PlannedPostNotMade(sorted(relies - claimed.keys()))
        await self.copies.queue_txn(cursor, plans, claimed, outcomes)
        return [outcomes[pending.id] for pending in rows]

    async def _group(self, cursor, group_id: int):
        """(name, course id, members also former ones) of the group, or None."""
        if group_id not in self._groups:
            found = await name_and_course_txn(cursor, group_id)
            self._groups[group_id] = None if found is None else (
                *found, await members_for_relay_txn(cursor, group_id,
                                                             include_left=True))
        return self._groups[group_id]
