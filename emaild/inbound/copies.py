"""
The copies of the group relay's posts (L{emaild.inbound.relay}): one outbox
message per member a post was claimed for, each to and from that member's
own addresses (reply address, bounce address, unsubscribe link and
List-Unsubscribe), the batch's copies queued in one statement.  Unsubscribe
links are minted once for those missing and kept across batches while they
stay valid for half their lifetime.
"""

from __future__ import annotations

import secrets

import attrs

from emaild.groups.addresses import ReplyAddresses
from emaild.groups.store import NewPost
from emaild.inbound.records import Outcome, Pending
from emaild.inbound.rewrite import Prepared, build_copy
from emaild.links.service import UNSUBSCRIBE as UNSUBSCRIBE_LINK
from emaild.links.store import LinkRow
from emaild.outbound.compose import Rendered
from emaild.outbound.enqueue_store import insert_message_batches_txn
from emaild.outbound.kinds import Scope

GROUP_KIND = "group"
#: unsubscribe links kept between batches, at most
LINKS_KEPT = 50_000


@attrs.frozen
class PostPlan:
    """A post of the batch to make, and what its copies need."""

    pending: Pending
    prepared: Prepared
    group_name: str
    course_id: int
    candidates: list
    in_reply_to: list[str]
    references: list[str]
    post: NewPost


class GroupCopies:
    """Makes and queues the copies of a relay batch's posts (L{queue_txn})."""

    def __init__(self, config, addresses: ReplyAddresses, links):
        self.config = config
        self.addresses = addresses
        self.links = links
        self.domain = config["smtp"]["relay_domain"]
        #: (person, target) -> their unsubscribe link, kept across batches
        self.links_kept: dict[tuple[int, str], LinkRow] = {}
        #: link -> (unsubscribe URL, mailto), encoded once (see _unsubscribe)
        self._unsubscribe_texts: dict[LinkRow, tuple[str, str]] = {}

    async def queue_txn(self, cursor, plans: list[PostPlan], claimed: dict[int, set[int]],
                        outcomes: dict[int, Outcome]) -> None:
        """One copy per member each post was claimed for, queued in one statement."""
        recipients = {p.post.post_id: [m for m in p.candidates
                                       if m.person_id in claimed.get(p.post.post_id, ())]
                      for p in plans}
        await self._unsubscribe_links(
            [(m.person_id, Scope(p.course_id, GROUP_KIND).target)
             for p in plans for m in recipients[p.post.post_id]])
        batches = []
        # every copy's bounce address from one read of the system's
        # randomness (20 hex digits each, as token_hex(10) gives one)
        count = sum(len(recipients[p.post.post_id]) for p in plans if p.post.post_id in claimed)
        randomness = secrets.token_hex(10 * count)
        bounce_tokens = (randomness[i:i + 20] for i in range(0, 20 * count, 20))
        for plan in plans:
            post, pending = plan.post, plan.pending
            if post.post_id not in claimed:
                outcomes[pending.id] = Outcome(
                    "ignored", "every member already had a copy of this message")
                continue
            target = Scope(plan.course_id, GROUP_KIND).target
            copies = [self._copy(plan, member, self.links_kept[(member.person_id, target)],
                                 next(bounce_tokens))
                      for member in recipients[post.post_id]]
            batches.append((f"group {post.group_id} post {post.post_id}", copies))
            outcomes[pending.id] = Outcome(
                "done", f"relayed as post {post.post_id} to {len(copies)} members",
                copies=len(copies))
        kind = self.config.kinds.get(GROUP_KIND)
        qos = self.config.qos_class(kind.qos if kind else None)
        await insert_message_batches_txn(cursor, "group-relay", qos, batches)

    def _copy(self, plan: PostPlan, member, link, bounce_token: str) -> Rendered:
        """
        The copy of a post for one member: our headers in front of its one
        entity; C{bounce_token}: 20 random hex digits for its bounce address.
        """
        post, prepared = plan.post, plan.prepared
        unsubscribe_url, unsubscribe_mailto = self._unsubscribe(link)
        data = build_copy(
            prepared, author=prepared.author, group_name=plan.group_name,
            reply_address=self.addresses.address(member.token),
            message_id=post.post_message_id, in_reply_to=plan.in_reply_to,
            references=plan.references, list_id=f"group-{post.group_id}.{self.domain}",
            unsubscribe_url=unsubscribe_url, unsubscribe_mailto=unsubscribe_mailto,
            loop_value=self.domain)
        return Rendered(member.email, f"bounces+{bounce_token}@{self.domain}",
                        post.post_message_id, prepared.subject, data, member.person_id,
                        plan.course_id, GROUP_KIND, unsubscribable=True)

    def _unsubscribe(self, link: LinkRow) -> tuple[str, str]:
        """
        (URL, mailto) of an unsubscribe link, its token encoded once: a
        member's link serves the copies of every post while it is kept.
        """
        texts = self._unsubscribe_texts.get(link)
        if texts is None:
            if len(self._unsubscribe_texts) > LINKS_KEPT:
                self._unsubscribe_texts.clear()
            url, token = self.links.url_and_token(link)
            texts = self._unsubscribe_texts[link] = (
                url, f"mailto:unsubscribe+{token}@{self.domain}")
        return texts

    async def _unsubscribe_links(self, keys: list[tuple[int, str]]) -> None:
        """
        Unsubscribe links for each (person, target), minted (or reused, see
        L{LinksService.mint_many}) in one transaction of their own for the
        whole batch: a link that outlives a rolled-back batch is harmless.
        Kept from batch to batch while they stay valid for half their
        lifetime (the store's own rule for reusing one).
        """
        fresh_until = self.links.clock() + self.links.ttl[UNSUBSCRIBE_LINK] / 2
        if len(self.links_kept) > LINKS_KEPT:
            self.links_kept.clear()
        missing = list(dict.fromkeys(k for k in keys if k not in self.links_kept
                                     or self.links_kept[k].expires_at <= fresh_until))
        if missing:
            rows = await self.links.mint_many(
                [self.links.request(p, UNSUBSCRIBE_LINK, target) for p, target in missing])
            self.links_kept.update(zip(missing, rows))
