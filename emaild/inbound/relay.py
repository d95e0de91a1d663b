"""
The relay processor: works through stored inbound recipients, many per
transaction (L{InboundStore.process_batch}), and finishes each in the
transaction that does its work.

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

from emaild.db.database import DatabaseUnavailable
from emaild.groups.addresses import ReplyAddresses
from emaild.groups.store import (
    find_posts_txn,
    insert_post_with_copies_txn,
    members_for_relay_txn,
    name_and_course_txn,
    post_of_message_txn,
)
from emaild.inbound.dsn import parse_bounce
from emaild.inbound.reading import PostToRead, read_posts
from emaild.inbound.rewrite import ANONYMOUS_NAME, build_copy
from emaild.inbound.store import (
    BOUNCE,
    INBOUND_CHANNEL,
    RELAY,
    UNSUBSCRIBE,
    InboundStore,
    Outcome,
    Pending,
    record_bounce_txn,
)
from emaild.links.service import UNSUBSCRIBE as UNSUBSCRIBE_LINK
from emaild.metrics import Metrics
from emaild.outbound.compose import Rendered
from emaild.outbound.kinds import Scope
from emaild.outbound.store import (
    bounced_message_txn,
    insert_messages_txn,
    record_bounced_txn,
    suppress_address_txn,
)

log = Logger()

GROUP_KIND = "group"
#: a row whose processing raised this often is marked failed
MAX_ATTEMPTS = 3
#: rows per transaction, and the copies after which a batch takes no more
#: rows (a post to a big group queues hundreds in one go)
BATCH_ROWS = 64
BATCH_COPIES = 2000
ANONYMOUS = ANONYMOUS_NAME


class PostUnreadable(Exception):
    """Reading a post raised; the message has the traceback."""


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
                 links, outbox, metrics: Metrics | None = None):
        self.reactor = reactor
        self.metrics = metrics if metrics is not None else Metrics()
        self.config = config
        self.store = store
        self.addresses = addresses
        self.links = links
        self.outbox = outbox
        self.domain = config["smtp"]["relay_domain"]
        self.bounce_limit = config["groups"]["hard_bounce_limit"]
        self.poll_interval = config["relay"]["poll_interval"]
        self._poll = task.LoopingCall(self.wake)
        self._poll.clock = reactor
        self._draining: defer.Deferred | None = None
        self._again = False
        #: what the rows of one batch share (see _before_batch)
        self._groups: dict[int, tuple] = {}
        self._links: dict[tuple[int, str], object] = {}
        self._read: dict[int, object] = {}
        self._found: dict[int, dict] = {}
        self._batch_posts: dict[int, dict] = {}

    # -- service ---------------------------------------------------------------
    name = "relay"
    starting: defer.Deferred | None = None

    def startService(self):  # noqa: N802
        super().startService()
        self._poll.start(self.poll_interval, now=True)
        #: fires once LISTEN is set up (it never fails: polling is the fallback)
        self.starting = defer.ensureDeferred(self._listen())

    async def _listen(self):
        try:
            await self.store.db.listen(INBOUND_CHANNEL, lambda _payload: self.wake(),
                                       on_recovered=self.wake)
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
        while self.running:
            # group names, members and unsubscribe links, looked up once per
            # batch: posts in a burst mostly go to the same groups
            try:
                results = await self.store.process_batch(
                    self._handle, limit=BATCH_ROWS, max_copies=BATCH_COPIES,
                    max_attempts=MAX_ATTEMPTS, before=self._before_rows)
            except (DatabaseUnavailable, psycopg2.OperationalError, psycopg2.InterfaceError) as e:
                log.warn("Relay processor paused, database unavailable: {e}", e=e)
                return  # the next poll (or the recovery NOTIFY) tries again
            except Exception:
                log.failure("Relay processor could not process a batch")
                return
            if not results:
                return
            for pending, outcome in results:
                if outcome.failure is not None:
                    log.failure("Processing inbound recipient {id} failed ({state})",
                                outcome.failure, id=pending.id, state=outcome.state)
            self.metrics.relay_copies.inc(sum(o.copies for _, o in results))

    async def _before_rows(self, cursor, batch: list[Pending]) -> None:
        # group names, members and unsubscribe links are looked up once per
        # batch (posts in a burst mostly go to the same groups)
        self._batch_posts: dict[int, dict[str, tuple[int, int, str]]] = {}
        await self._before_batch(cursor, batch)

    async def _handle(self, cursor, pending: Pending) -> Outcome:
        if pending.purpose == RELAY:
            return await self._relay(cursor, pending)
        if pending.purpose == UNSUBSCRIBE:
            return Outcome(*await self._unsubscribe(pending))
        if pending.purpose == BOUNCE:
            return Outcome(*await self._bounce(cursor, pending))
        return Outcome("failed", f"unknown purpose {pending.purpose!r}")

    # -- unsubscribe by mail ---------------------------------------------------
    async def _unsubscribe(self, pending: Pending) -> tuple[str, str]:
        link = await self.links.store.get(pending.link_id) if pending.link_id else None
        if link is None or link.purpose != UNSUBSCRIBE_LINK:
            return "ignored", "the unsubscribe link no longer exists"
        scope = await self.outbox.unsubscribe(link, "kind", source="mailto")
        return "done", f"person {link.person_id} unsubscribed from {scope.target}"

    # -- bounces ---------------------------------------------------------------
    async def _bounce(self, cursor, pending: Pending) -> tuple[str, str]:
        if pending.mail_from != "":
            return "ignored", ("not a bounce: mail to a bounce address must come from the "
                               "null sender <>")
        sent = await bounced_message_txn(cursor, pending.address)
        if sent is None:
            return "ignored", "no message of ours has this bounce address"
        outbox_id, recipient, person_id = sent.outbox_id, sent.recipient, sent.person_id
        reports = parse_bounce(pending.raw)
        if not reports:
            return "ignored", "no delivery status found in this bounce"
        report = next((r for r in reports if r.hard), reports[0])
        await record_bounced_txn(cursor, outbox_id, report.status, report.diagnostic)
        hard_bounces = await record_bounce_txn(
            cursor, address=recipient, outbox_id=outbox_id, person_id=person_id,
            hard=report.hard, status=report.status, diagnostic=report.diagnostic)
        what = "hard" if report.hard else "soft"
        if report.hard and hard_bounces >= self.bounce_limit:
            await suppress_address_txn(
                cursor, recipient, f"bounced: {hard_bounces} hard bounces, the last "
                                   f"{report.status} {report.diagnostic}".strip()[:500])
            return "done", (f"{what} bounce of message {outbox_id} ({report.status}); address "
                            f"suppressed after {hard_bounces} hard bounces")
        return "done", f"{what} bounce of message {outbox_id} ({report.status})"

    # -- the group relay ---------------------------------------------------------
    async def _before_batch(self, cursor, batch: list[Pending]) -> None:
        """
        Read every post of the batch first (parse, check, scrub: see
        L{read_posts}), then look up the posts they cite in one query per
        group rather than one per post.
        """
        self._groups, self._links, self._read, self._found = {}, {}, {}, {}
        waiting: list[tuple[Pending, object]] = []
        items, members = [], {}
        for pending in batch:
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

    async def _relay(self, cursor, pending: Pending) -> Outcome:
        if pending.id not in self._read:  # not read ahead (called without its batch)
            self._batch_posts = {}
            await self._before_batch(cursor, [pending])
        read = self._read.pop(pending.id)
        if isinstance(read, PostUnreadable):
            raise read
        if isinstance(read, Outcome):
            return read
        author, prepared = read.author, read.prepared
        group_name, course_id, members = await self._group(cursor, pending.group_id)
        earlier = await post_of_message_txn(
            cursor, pending.group_id, pending.message_id) if pending.shared else None
        if earlier is not None:
            return Outcome("ignored", f"a copy of post {earlier} (the message named this "
                                      "reply address more than once)")
        # posts made earlier in this batch count as found too
        found = {**self._found.get(pending.group_id, {}),
                 **self._batch_posts.get(pending.group_id, {})}
        original = prepared.original_message_id
        if original and original in found:
            return Outcome("ignored", f"a copy of post {found[original][0]} (delivered twice)")
        # replies cite our ids (or the author's own, for their earlier posts);
        # ids we never issued say nothing to the other members: dropped
        parent_key = next((i for i in prepared.in_reply_to if i in found), None) or next(
            (i for i in reversed(prepared.references) if i in found), None)
        in_reply_to = _unique(found[i][2] for i in prepared.in_reply_to if i in found)
        references = _unique([found[i][2] for i in prepared.references if i in found]
                             + in_reply_to)

        message_id = f"<{secrets.token_hex(12)}@{self.domain}>"
        candidates = [m for m in members
                      if m.live and m.email and m.person_id != author.person_id]
        thread_id = found[parent_key][1] if parent_key else None
        # the database's word on who has not had this message yet
        post_id, claimed = await insert_post_with_copies_txn(
            cursor, group_id=pending.group_id, author_id=author.person_id,
            inbound_id=pending.id, message_id=pending.message_id, thread_id=thread_id,
            post_message_id=message_id, original_message_id=original,
            subject=prepared.subject, person_ids=[m.person_id for m in candidates])
        if post_id is None:
            return Outcome("ignored", "every member already had a copy of this message")
        posts = self._batch_posts.setdefault(pending.group_id, {})
        for key in filter(None, (message_id, original)):
            posts[key] = (post_id, thread_id or post_id, message_id)
        recipients = [m for m in candidates if m.person_id in claimed]
        links = await self._unsubscribe_links([m.person_id for m in recipients],
                                              Scope(course_id, GROUP_KIND).target)
        copies = []
        for member, link in zip(recipients, links):
            reply_address = self.addresses.address(member.token)
            token = self.links.token(link)
            data = build_copy(
                prepared, author=prepared.author, group_name=group_name,
                reply_address=reply_address, message_id=message_id,
                in_reply_to=in_reply_to, references=references,
                list_id=f"group-{pending.group_id}.{self.domain}",
                unsubscribe_url=self.links.url(link),
                unsubscribe_mailto=f"mailto:unsubscribe+{token}@{self.domain}",
                loop_value=self.domain)
            copies.append(Rendered(
                member.email, f"bounces+{secrets.token_hex(10)}@{self.domain}", message_id,
                prepared.subject, data, member.person_id, course_id, GROUP_KIND,
                unsubscribable=True))
        kind = self.config.kinds.get(GROUP_KIND)
        qos = self.config.qos_class(kind.qos if kind else None)
        if copies:
            await insert_messages_txn(cursor, "group-relay", qos, copies,
                                      batch=f"group {pending.group_id} post {post_id}")
        return Outcome("done", f"relayed as post {post_id} to {len(copies)} members",
                       copies=len(copies))

    async def _group(self, cursor, group_id: int):
        """(name, course id, members also former ones) of the group, or None."""
        if group_id not in self._groups:
            found = await name_and_course_txn(cursor, group_id)
            self._groups[group_id] = None if found is None else (
                *found, await members_for_relay_txn(cursor, group_id,
                                                             include_left=True))
        return self._groups[group_id]

    async def _unsubscribe_links(self, person_ids: list[int], target: str) -> list:
        # minted (or reused, see LinksService.mint_many) in their own
        # transaction: a link that outlives a rolled-back batch is harmless
        missing = _unique(p for p in person_ids if (p, target) not in self._links)
        if missing:
            rows = await self.links.mint_many(
                [self.links.request(p, UNSUBSCRIBE_LINK, target) for p in missing])
            self._links.update(zip(((p, target) for p in missing), rows))
        return [self._links[(p, target)] for p in person_ids]
