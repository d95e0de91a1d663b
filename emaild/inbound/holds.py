"""
Group posts held until their member confirms them.

A post that claims to come from a member but that the member's domain does
not vouch for (see L{emaild.inbound.auth.verdict}) is, under
C{[groups] unauthenticated = "hold"}, stored with its relay recipients in
state C{held}, which the relay processor never takes.  The member is asked
at their own address (the one the group knows, never the post's From):
"Did you send this?", with a link (purpose C{hold}, valid for
C{[links] hold_ttl}) to a page with two buttons.  Opening the page changes
nothing (mail scanners fetch links); pressing "Yes, send it" releases the
post to the relay processor, "No, it was not me" discards it (recorded as
C{ignored} with the reason).  An unanswered question expires with its link
and the post is never relayed: L{HoldExpiry} marks it C{ignored}.
"""

from __future__ import annotations

import secrets
from email.parser import BytesHeaderParser
from email.policy import default as default_policy

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from emaild.groups.store import GroupStore
from emaild.inbound.holds_store import HeldMessage, Hold, HoldStore
from emaild.links.service import HOLD, Links, Resolution

log = Logger()

#: the confirmation mail (templates/email/hold_confirm.*)
TEMPLATE = "hold_confirm"
KIND = "transactional"


def subject_of(raw: bytes) -> str:
    try:
        subject = BytesHeaderParser(policy=default_policy).parsebytes(raw).get("Subject", "")
        # shown to the member: no control characters, one line
        text = "".join(c if c.isprintable() else " " for c in str(subject))
        return " ".join(text.split())[:200]
    except Exception:  # a header too broken to decode says nothing useful
        return ""


class Holds:
    def __init__(self, config, store: HoldStore, links: Links, groups: GroupStore,
                 composer=None):
        self.config = config
        self.store = store
        self.links = links
        self.groups = groups
        #: the outbound composer, for the confirmation mail (not needed to answer)
        self.composer = composer
        self.qos = config.qos_class(config.kinds[KIND].qos if KIND in config.kinds else None)

    async def hold(self, message: HeldMessage, member_email: str) -> int:
        """
        Store the post as held and queue the question to C{member_email}
        (the address the group knows the member by).  Returns the inbound
        message id.
        """
        # a fresh link per hold (a random target, so minting never reuses one)
        (link,) = await self.links.mint_many(
            [self.links.request(message.person_id, HOLD, f"hold:{secrets.token_hex(8)}")])
        group = await self.groups.get(message.group_id) if message.group_id else None
        member = (await self.groups.member(message.group_id, message.person_id)
                  if message.group_id else None)
        draft = self.composer.draft(
            TEMPLATE, member_email, {
                "confirm_url": self.links.url(link), "subject": subject_of(message.raw),
                "group_name": group.name if group else "your group",
                "valid_days": max(1, round(self.config["links"]["hold_ttl"] / 86400))},
            person_id=message.person_id, display_name=member.display_name if member else "",
            kind=KIND)
        confirmation = self.composer.finish(draft, [])
        return await self.store.hold(message, link.id, link.expires_at, TEMPLATE, self.qos,
                                     confirmation)

    async def find(self, token: str) -> tuple[Resolution, Hold | None]:
        """The link of C{token} and its hold (None for an unknown token)."""
        resolution = await self.links.resolve(token, HOLD)
        if resolution.link is None:
            return resolution, None
        return resolution, await self.store.by_link(resolution.link.id)

    async def answer(self, hold: Hold, send: bool) -> str | None:
        state = await self.store.answer(hold.link_id, send)
        await self.links.store.record_use(hold.link_id)
        return state


class HoldExpiry(service.Service):
    """
    Every C{interval} seconds, marks the posts whose question expired
    unanswered C{ignored} (so C{emaild inbound} stops listing them as held).
    """

    name = "hold-expiry"

    def __init__(self, reactor, store: HoldStore, interval: float = 600):
        self.store = store
        self._loop = task.LoopingCall(self.expire)
        self._loop.clock = reactor
        self.interval = interval

    def startService(self):  # noqa: N802
        super().startService()
        self._loop.start(self.interval, now=True)

    def stopService(self):  # noqa: N802
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    async def _expire(self) -> None:
        try:
            expired = await self.store.expire()
        except Exception:  # the database may be down; the next tick tries again
            log.failure("Cannot expire held group posts")
            return
        if expired:
            log.info("{n} held group posts expired unconfirmed", n=expired)

    def expire(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._expire())
