"""
A post from the group page, turned into the mail a member could have sent
to their reply address, so it goes out exactly like a mailed post (same
processor, same records, same anonymisation).
"""

from __future__ import annotations

import secrets
import time
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate

from emaild.groups.addresses import ReplyAddresses
from emaild.groups.store import GroupStore
from emaild.inbound.records import Recipient
from emaild.inbound.store import RELAY, InboundStore

MAX_SUBJECT = 200
MAX_TEXT = 100_000


class PostError(ValueError):
    """
    The post cannot be made; the message says why (for the page).
    """


def _clean(value: str) -> str:
    return "\n".join(line.rstrip() for line in value.replace("\r\n", "\n").replace("\r", "\n")
                     .split("\n")).strip()


async def post_from_web(inbound: InboundStore, groups: GroupStore, addresses: ReplyAddresses,
                        group_id: int, person_id: int, subject: str, text: str,
                        clock=time.time) -> int:
    """
    Store a new discussion started by C{person_id} on the page of
    C{group_id}; fires with the inbound message id.  Raises L{PostError}
    for an empty or oversized subject or text, or when the person is not a
    current member of the group.
    """
    subject = " ".join(str(subject).split())
    text = _clean(str(text))
    if not subject:
        raise PostError("Please give your message a subject.")
    if len(subject) > MAX_SUBJECT:
        raise PostError(f"The subject is longer than {MAX_SUBJECT} characters.")
    if not text:
        raise PostError("Please write a message.")
    if len(text) > MAX_TEXT:
        raise PostError(f"The message is longer than {MAX_TEXT} characters.")
    member = await groups.member(group_id, person_id)
    if member is None or not member.live:
        raise PostError("You are not a member of this group.")

    reply_address = addresses.address(member.token)
    # the member's own address when we have one, so the From check and the
    # scrubbing see what a mailed post would show
    sender = member.email or reply_address
    message = EmailMessage(policy=SMTP)
    message["From"] = Address(display_name=" ".join(member.display_name.split()), addr_spec=sender)
    message["To"] = reply_address
    message["Subject"] = subject
    message["Date"] = formatdate(clock(), usegmt=True)
    message["Message-ID"] = f"<web.{secrets.token_hex(12)}@{addresses.domain}>"
    message.set_content(text + "\n", cte="quoted-printable")
    raw = message.as_bytes()
    return await inbound.receive(
        peer="web", helo="", tls=True, mail_from=sender,
        recipients=[Recipient(reply_address, RELAY, group_id=group_id, person_id=person_id,
                              sender_verified=True, member_email=member.email)],
        raw=raw)
