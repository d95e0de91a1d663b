"""
The inbound part's rows and values: what an accepted RCPT address means,
a post to store, a received row as `emaild inbound` shows it, a row the
relay processor takes, what it made of one, and a refusal summary
(L{emaild.inbound.store} reads and writes them).
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs
from twisted.python.failure import Failure


@attrs.frozen
class Recipient:
    """
    What an accepted RCPT address means (the server keeps one per RCPT).
    """

    address: str
    purpose: str
    group_id: int | None = None
    #: relay: the member whose reply address it is; bounce: whom the
    #: bounced message was for
    person_id: int | None = None
    link_id: int | None = None
    outbox_id: int | None = None
    #: relay: the envelope sender already proved it is that member
    sender_verified: bool = False
    #: relay: the member's address and name, for the From check
    member_email: str | None = None


@attrs.frozen
class Received:
    """One message to store (L{InboundStore.receive_many})."""

    peer: str
    helo: str
    tls: bool
    mail_from: str
    recipients: tuple[Recipient, ...]
    raw: bytes = attrs.field(repr=False)
    #: the Authentication-Results value of a checked post
    authentication: str = ""


@attrs.frozen
class Outcome:
    """
    What processing one recipient row came to: a terminal C{state} with its
    reason, or C{retry} (it raised; see L{emaild.inbound.store.process_rows}).
    """

    state: str
    reason: str
    #: outbound copies queued for it
    copies: int = 0
    #: why it raised, for the log
    failure: Failure | None = attrs.field(default=None, eq=False)


@attrs.frozen
class ReceivedRow:
    """
    One recipient row of a received message, as C{emaild inbound} lists it.
    """

    message_id: int
    received_at: datetime.datetime
    #: the reverse path; "" for the null sender
    mail_from: str
    address: str
    purpose: str
    state: str
    reason: str | None
    size: int
    #: the Authentication-Results value, or None when it was not checked
    authentication: str | None


@attrs.frozen
class Pending:
    """
    A recipient row to process, with its message.
    """

    id: int
    message_id: int
    address: str
    purpose: str
    group_id: int | None
    person_id: int | None
    link_id: int | None
    outbox_id: int | None
    attempts: int
    mail_from: str
    raw: bytes
    #: the message has other recipient rows (the same address named twice, ...)
    shared: bool = False


@attrs.frozen
class Refusal:
    """Attempts refused for one reason about one subject in one hour."""

    reason: str
    subject: str
    address: str
    mail_from: str
    reply: str
    attempts: int
    first_at: Any
    last_at: Any
