"""
What the sender hands a transport, and what a transport answers.

A transport delivers one rendered message to one recipient and reports how
it went as a L{DeliveryResult}; it never raises for a delivery problem, so the
sender can record every outcome.  The sender decides what an outcome means
for the queue (retry with backoff, fail, requeue without burning an attempt).
"""

from __future__ import annotations

import enum

import attrs
from zope.interface import Attribute, Interface


class Outcome(enum.Enum):
    #: The relay accepted the message (2xx after DATA) or it was written out.
    SENT = "sent"
    #: Temporary problem (4xx, connection refused/lost, timeout): retry later.
    RETRY = "retry"
    #: Permanent refusal (5xx): never retry.
    FAILED = "failed"
    #: The relay is metering us (SES "454 Throttling failure: Maximum sending
    #: rate exceeded"): requeue without burning an attempt and slow down.
    THROTTLED = "throttled"
    #: The relay's daily quota is used up ("Daily message quota exceeded"):
    #: requeue without burning an attempt and stop until the quota resets.
    QUOTA = "quota"


@attrs.frozen
class OutgoingMessage:
    #: outbox row id, for logs and maildir file names
    id: int
    #: envelope sender (MAIL FROM), per message, on the relay domain
    sender: str
    #: envelope recipient (RCPT TO); one recipient per outbox row
    recipient: str
    #: the whole RFC 5322 message; line endings may be LF or CRLF, the
    #: transport normalises them
    data: bytes


@attrs.frozen
class DeliveryResult:
    outcome: Outcome
    #: SMTP reply code, or None when there was no reply (connection error,
    #: local write)
    code: int | None = None
    #: the reply text or a description of the error, kept in the attempt log
    reply: str = ""


class IDeliveryTransport(Interface):
    """
    Something that delivers outbound messages (the relay's SMTP, a maildir).

    Not to be confused with Twisted's L{twisted.internet.interfaces.ITransport},
    the byte stream a protocol writes to.
    """

    name = Attribute("Short name for logs and /healthz, e.g. 'smtp'.")

    def deliver(message):
        """
        Deliver one message.

        @type message: L{OutgoingMessage}
        @return: L{Deferred} firing with a L{DeliveryResult}; it never fails
            for a delivery problem (those are results), and it fires within a
            bounded time (the transport's own timeouts).
        """

    def capacity():
        """
        How many messages the transport could start on at once right now
        (e.g. idle connections plus connections it may still open); 0 once
        closing.  Informational (health pages): the sender keeps a window of
        messages per connection in the transport, which queues them.
        """

    def close():
        """
        Stop taking messages; let deliveries already under way finish and
        close connections.  Returns a L{Deferred} that fires when closed.
        """

    def abort():
        """
        Drop every connection at once (used when the shutdown bound passes);
        pending deliveries fire with a RETRY result.
        """
