"""
The relay processor: works through stored inbound recipients, one per
transaction, and finishes each in the transaction that does its work.

- a member's reply address: the post is re-sent to every other current
  member through the outbox (rate limit, retries and records apply), each
  copy from and to that recipient's own reply address, with every member's
  real address scrubbed out and threading mapped to our own Message-IDs;
- an unsubscribe address: the person it names is unsubscribed;
- the bounce address of one of our messages: the bounce is recorded, and an
  address with C{[groups] hard_bounce_limit} hard bounces is suppressed.

Auto-replies, bounces sent to reply addresses, loops and other lists' mail
are recorded as C{ignored} with the reason, never relayed.
"""

from __future__ import annotations

import secrets
from email.utils import getaddresses

import psycopg2
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from emaild.db.database import DatabaseUnavailable
from emaild.groups.addresses import ReplyAddresses
from emaild.groups import store as group_tables
from emaild.inbound.classify import not_relayable, parse_message
from emaild.inbound.dsn import parse_bounce
from emaild.inbound.rewrite import build_copy, prepare, scrub_map
from emaild.inbound.store import (BOUNCE, INBOUND_CHANNEL, RELAY, UNSUBSCRIBE, InboundStore,
                                  Pending, record_bounce)
from emaild.links.service import UNSUBSCRIBE as UNSUBSCRIBE_LINK
from emaild.metrics import Metrics
from emaild.outbound.compose import Rendered
from emaild.outbound.kinds import Scope
from emaild.outbound.store import (bounced_message_txn, insert_messages_txn, record_bounced_txn,
                                   suppress_address_txn)

log = Logger()

GROUP_KIND = "group"
#: a row whose processing raised this often is marked failed
MAX_ATTEMPTS = 3
ANONYMOUS = "A group member"


def _unique(items):
    return list(dict.fromkeys(items))


class RelayProcessor(service.Service):
    def __init__(self, reactor, config, store: InboundStore, addresses: ReplyAddresses,
                 links, outbox, metrics: Metrics | None = None):
        self.reactor = reactor
        self.metrics = metrics if metrics is not None else Metrics()
        #: copies queued by the row in hand, counted once its transaction commits
        self._copies = 0
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
        self._current: int | None = None

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
        # finish the row in hand (its transaction commits or rolls back
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
            self._current = None
            self._copies = 0
            try:
                done = await self.store.process_next(self._handle)
            except (DatabaseUnavailable, psycopg2.OperationalError, psycopg2.InterfaceError) as e:
                log.warn("Relay processor paused, database unavailable: {e}", e=e)
                return  # the next poll (or the recovery NOTIFY) tries again
            except Exception as e:
                if self._current is None:
                    log.failure("Relay processor could not take work")
                    return
                log.failure("Processing inbound recipient {id} failed", id=self._current)
                try:
                    await self.store.fail(self._current, f"internal error: {e!r}"[:500],
                                          MAX_ATTEMPTS)
                except Exception:
                    log.failure("Cannot record the failure of inbound recipient {id}",
                                id=self._current)
                    return
                continue
            if done is None:
                return
            self.metrics.relay_copies.inc(self._copies)

    async def _handle(self, cursor, pending: Pending) -> tuple[str, str]:
        self._current = pending.id
        if pending.purpose == RELAY:
            return await self._relay(cursor, pending)
        if pending.purpose == UNSUBSCRIBE:
            return await self._unsubscribe(pending)
        if pending.purpose == BOUNCE:
            return await self._bounce(cursor, pending)
        return "failed", f"unknown purpose {pending.purpose!r}"

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
        hard_bounces = await record_bounce(
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
    async def _relay(self, cursor, pending: Pending) -> tuple[str, str]:
        message = parse_message(pending.raw)
        reason = not_relayable(message, pending.mail_from, self.domain)
        if reason:
            return "ignored", f"not relayed: {reason}"
        group = await group_tables.name_and_course(cursor, pending.group_id)
        if group is None:
            return "ignored", "the group no longer exists"
        group_name, course_id = group
        members = await group_tables.members_for_relay(cursor, pending.group_id,
                                                       include_left=True)
        author = next((m for m in members if m.person_id == pending.person_id), None)
        if author is None:
            return "ignored", "the sender is no longer a member of the group"
        author_name = author.display_name or ANONYMOUS

        # every address that could identify anyone: members (also former
        # ones, who may be quoted), the envelope sender and the From header
        known = [(m.email, m.display_name or ANONYMOUS) for m in members if m.email]
        senders = [pending.mail_from] + [a for _, a in getaddresses(
            [str(v) for v in (message.get_all("From") or [])]) if "@" in a]
        known += [(a, author_name) for a in senders if a]
        prepared = prepare(message, scrub_map(known))

        cited = _unique(prepared.in_reply_to + prepared.references)
        original = prepared.original_message_id
        found = await group_tables.find_posts(
            cursor, pending.group_id, cited + ([original] if original else []))
        if original and original in found:
            return "ignored", f"a copy of post {found[original][0]} (delivered twice)"
        # replies cite our ids (or the author's own, for their earlier posts);
        # ids we never issued say nothing to the other members: dropped
        parent_key = next((i for i in prepared.in_reply_to if i in found), None) or next(
            (i for i in reversed(prepared.references) if i in found), None)
        in_reply_to = _unique(found[i][2] for i in prepared.in_reply_to if i in found)
        references = _unique([found[i][2] for i in prepared.references if i in found]
                             + in_reply_to)

        message_id = f"<{secrets.token_hex(12)}@{self.domain}>"
        post_id = await group_tables.insert_post(
            cursor, group_id=pending.group_id, author_id=author.person_id,
            inbound_id=pending.id, thread_id=found[parent_key][1] if parent_key else None,
            message_id=message_id, original_message_id=original, subject=prepared.subject)

        recipients = [m for m in members
                      if m.live and m.email and m.person_id != author.person_id]
        target = Scope(course_id, GROUP_KIND).target
        links = await self.links.mint_many(
            [self.links.request(m.person_id, UNSUBSCRIBE_LINK, target) for m in recipients])
        copies = []
        for member, link in zip(recipients, links):
            reply_address = self.addresses.address(member.token)
            token = self.links.token(link)
            data = build_copy(
                prepared, author=author_name, group_name=group_name,
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
        await insert_messages_txn(cursor, "group-relay", qos, copies,
                                  batch=f"group {pending.group_id} post {post_id}")
        await group_tables.set_copies(cursor, post_id, len(copies))
        self._copies = len(copies)
        return "done", f"relayed as post {post_id} to {len(copies)} members"
