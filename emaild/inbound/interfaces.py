"""
What the inbound SMTP server and its handler agree on: the envelope of one
transaction, the handler's interface, and L{Refused}, the reply a handler
asks for instead of 250.
"""

from __future__ import annotations

import attrs
from twisted.internet import defer
from zope.interface import Interface


class Refused(Exception):
    """
    Raised (or failed with) by an L{IInboundHandler}: the reply to send
    instead of 250, e.g. C{Refused(550, "5.1.1", "no such address here")}.
    """

    def __init__(self, code: int, status: str, text: str):
        super().__init__(code, status, text)
        self.code = code
        self.status = status
        self.text = text

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"


@attrs.frozen
class Envelope:
    #: the client's IP address
    peer: str
    #: what it said in HELO/EHLO
    helo: str
    #: the reverse path; "" for the null sender <>
    mail_from: str
    #: what check_recipient returned for each accepted RCPT, in order;
    #: results that compare equal are kept once
    recipients: tuple
    #: whether the message came over TLS
    tls: bool
    #: octets of the message as the client sent it (after dot-unstuffing,
    #: without the Received header we add)
    size: int


class IInboundHandler(Interface):
    """
    What the server asks about recipients and gives each message to.
    """

    def check_recipient(address: str, mail_from: str) -> "defer.Deferred | object":
        """
        Accept (return any object, or a Deferred of it; it is kept in
        L{Envelope.recipients}) or raise/fail with L{Refused}.  Any other
        failure is answered C{451 4.3.0}.  Two RCPTs whose results compare
        equal are one recipient: the second is answered 250 and not kept
        again, so a handler that returns the same value for every spelling
        of one mailbox gets it once.
        """

    def deliver(envelope: Envelope, raw: bytes) -> "defer.Deferred[str]":
        """
        Store the message durably; fire with an id to name in the 250 reply.
        L{Refused} is answered with its reply; any other failure with
        C{451 4.3.0} (never a 5xx).
        """
