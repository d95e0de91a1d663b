"""
What the SMTP server asks about each RCPT and each message: which of our
addresses it is (a member's reply address, an unsubscribe address, the
bounce address of one of our messages), whether the sender may post, and
storing the message before the server answers 250.

No open relay: anything not on the relay domain is refused 550 5.7.1, and on
the relay domain only the three kinds of live address are accepted (5.1.1
otherwise).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from emaild.groups.addresses import ReplyAddresses
from emaild.groups.store import GroupStore
from emaild.inbound.auth.policy import from_addresses
from emaild.inbound.groupcommit import GroupCommit
from emaild.inbound.memberlookup import MemberLookups, PostCounts
from emaild.inbound.records import Received, Recipient
from emaild.inbound.server import Envelope, IInboundHandler, Refused
from emaild.inbound.store import BOUNCE, RELAY, UNSUBSCRIBE, InboundStore
from emaild.links.service import UNSUBSCRIBE as UNSUBSCRIBE_LINK
from emaild.links.service import Links
from emaild.outbound.store import OutboxStore

UNSUBSCRIBE_PREFIX = "unsubscribe+"
#: [groups] max_posts_per_hour's default
DEFAULT_MAX_POSTS_PER_HOUR = 30
BOUNCE_PREFIX = "bounces+"


@implementer(IInboundHandler)
class InboundHandler:
    def __init__(self, store: InboundStore, groups: GroupStore, addresses: ReplyAddresses,
                 links: Links, outbox: OutboxStore, *,
                 max_posts_per_hour: int = DEFAULT_MAX_POSTS_PER_HOUR, sender_auth=None,
                 reactor=None):
        """
        @param sender_auth: a L{emaild.inbound.auth.policy.SenderAuthentication}
            that checks every group post (SPF, DKIM, DMARC; the daemon always
            gives one).  Without it, only the envelope or From must name the
            member, which anyone can write (tests of other concerns).
        @param reactor: given, the RCPT lookups of one reactor turn share a
            query (L{MemberLookups}), and the messages of one turn a commit
            (L{GroupCommit}); the daemon gives it
        """
        self.store = store
        #: stores messages, several per transaction under load
        self.posts = GroupCommit(store, reactor=reactor)
        self.sender_auth = sender_auth
        #: a member's posts to one group per hour; the next RCPT gets 450 4.7.1
        self.max_posts_per_hour = max_posts_per_hour
        self.groups = groups
        #: reply addresses looked up, several per query under load
        self.members = MemberLookups(groups, reactor=reactor)
        #: and their posting-rate counts, at the same time
        self.post_counts = PostCounts(store, reactor=reactor)
        self.addresses = addresses
        self.links = links
        #: for looking up our own bounce addresses
        self.outbox = outbox

    async def _check(self, address: str, mail_from: str) -> Recipient:
        if not self.addresses.is_ours(address):
            raise Refused(550, "5.7.1", f"relaying denied: this server only accepts mail for "
                                        f"{self.addresses.domain}")
        local = address.rpartition("@")[0]
        # link tokens are case-sensitive (hashids); only the prefix is not
        if local.lower().startswith(UNSUBSCRIBE_PREFIX):
            resolution = await self.links.resolve(local[len(UNSUBSCRIBE_PREFIX):], UNSUBSCRIBE_LINK)
            # an expired unsubscribe link is still honoured (see [links])
            if resolution.link is not None:
                return Recipient(address, UNSUBSCRIBE, person_id=resolution.link.person_id,
                                 link_id=resolution.link.id)
        elif local.lower().startswith(BOUNCE_PREFIX):
            sent = await self.outbox.by_bounce_address(address)
            if sent is not None:
                return Recipient(address, BOUNCE, outbox_id=sent.outbox_id,
                                 person_id=sent.person_id)
        else:
            token = self.addresses.parse(address)
            member = None if token is None else await self._member(token, address, mail_from)
            if member is not None:
                verified = bool(member.email) and member.email.lower() == mail_from.lower()
                # the canonical spelling, so that every spelling of one
                # reply address is one recipient (the server keeps equal
                # results once)
                address = self.addresses.address(token)
                return Recipient(address, RELAY, group_id=member.group_id,
                                 person_id=member.person_id, sender_verified=verified,
                                 member_email=member.email)
        raise Refused(550, "5.1.1", "no such address here")

    async def _member(self, token, address: str, mail_from: str):
        """
        The current member a reply address names (None when none: a wrong
        secret, no such membership), their posting rate checked.  The
        count is asked for with the lookup: one round trip for a limited
        RCPT, not two.
        """
        limit = self.max_posts_per_hour
        counting = self.post_counts.count(token.group_id, token.person_id, limit) \
            if limit else None
        try:
            member = await self.members.by_token(token)
            if member is not None and not member.live:
                raise Refused(550, "5.1.1", "this group address no longer works: its owner "
                                            "left the group")
        except Exception:
            _forget(counting)
            raise
        if member is None:
            _forget(counting)
        elif counting is not None:
            await self._check_posting_rate(member, address, mail_from, limit, await counting)
        return member

    async def _check_posting_rate(self, member, address: str, mail_from: str, limit: int,
                                  posts: int) -> None:
        """
        C{450 4.7.1} at RCPT once the member posted C{max_posts_per_hour}
        (C{limit}) times to the group in the last hour (C{posts}, counted up
        to C{limit}): before DATA, so nothing is transferred or stored, and
        a 4xx, so a real member's mail is sent again later by their MTA
        rather than lost.
        """
        if posts < limit:
            return
        refused = Refused(450, "4.7.1", f"too many posts from this member in the last hour "
                                        f"(at most {limit}); try again later")
        await self.store.record_refusal(
            reason="rate", subject=f"group {member.group_id} person {member.person_id}",
            group_id=member.group_id, person_id=member.person_id, address=address,
            mail_from=mail_from, reply=str(refused))
        raise refused

    def check_recipient(self, address: str, mail_from: str):
        return Deferred.fromCoroutine(self._check(address, mail_from))

    async def _deliver(self, envelope: Envelope, raw: bytes) -> str:
        recipients = list(envelope.recipients)
        authentication = ""
        unverified = [r for r in recipients if r.purpose == RELAY and not r.sender_verified]
        if self.sender_auth is not None and any(r.purpose == RELAY for r in recipients):
            checked = await self.sender_auth.check(envelope, raw)  # may raise Refused
            if checked.hold:
                return str(await self.sender_auth.hold(envelope, raw, checked))
            authentication = checked.header
        elif unverified:
            senders = from_addresses(raw)
            for r in unverified:
                if not (r.member_email and r.member_email.lower() in senders):
                    raise Refused(550, "5.7.1", "you can only post to a group through your own "
                                                "group address, from the address the group "
                                                "knows you by")
        message_id = await self.posts.receive(Received(
            peer=envelope.peer, helo=envelope.helo, tls=envelope.tls,
            mail_from=envelope.mail_from, recipients=tuple(recipients), raw=raw,
            authentication=authentication))
        return str(message_id)

    def deliver(self, envelope: Envelope, raw: bytes):
        return Deferred.fromCoroutine(self._deliver(envelope, raw))


def _forget(counting: Deferred | None) -> None:
    """A count no longer needed: its failure is nobody's to report."""
    if counting is not None:
        counting.addErrback(lambda _: None)
