"""
Sender authentication at the end of DATA: what the inbound handler asks
before it stores a group post (see L{verdict} for the policy).

    auth = SenderAuthentication(Authenticator(resolver), holds, "hold", "relay.example.org")
    checked = await auth.check(envelope, raw)     # raises Refused (550 / 451)
    if checked.hold:
        message_id = await auth.hold(envelope, raw, checked)
    else:
        ... store with checked.header

A post must carry exactly one From address, the member's own (the address
the group knows them by), and that address's domain must vouch for it.
"""

from __future__ import annotations

import functools
import re
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.policy import default as default_policy
from email.utils import getaddresses

import attrs
from twisted.logger import Logger

from emaild.inbound.auth.verdict import HOLD, Authenticator, decide
from emaild.inbound.auth.verdict import RELAY as RELAY_DECISION
from emaild.inbound.classify import not_relayable, parse_message
from emaild.inbound.holds import Holds
from emaild.inbound.holds_store import HeldMessage
from emaild.inbound.server import Envelope, Refused
from emaild.inbound.store import RELAY

log = Logger()

NOT_THE_MEMBER = ("you can only post to a group through your own group address, from the "
                  "address the group knows you by")


def from_addresses(raw: bytes) -> list[str]:
    """
    Every address in the From header fields, lower-cased, as the relay
    reads them (L{emaild.inbound.reading}: the modern policy's From header,
    then C{getaddresses}).

    Only the header section is split into fields, as compat32's parser
    splits it (both policies split a message into header fields alike:
    RFC 5322 name and value, continuation lines kept); the From values
    alone then go through the modern policy's header parser, and what that
    gives is remembered per From value (posts from one member carry the
    same From line).
    """
    values = from_values(raw)
    return list(_addresses_in(values)) if values is not None else []


def from_values(raw: bytes) -> tuple[str, ...] | None:
    """
    The From fields' values as compat32's header parser gives them (None:
    too broken to parse).  A header section of well-formed CRLF lines is
    split here (compat32's parser costs 7-10 times as much); anything else
    goes to the parser.
    """
    values = split_from_values(raw)
    return values if values is not None else parsed_from_values(raw)


def parsed_from_values(raw: bytes) -> tuple[str, ...] | None:
    """L{from_values} by compat32's header parser, for any input."""
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(_header_section(raw))
        return tuple(v for k, v in headers.raw_items() if k.lower() == "from")
    except Exception:  # a message too broken to parse proves nothing
        return None


def _header_section(raw: bytes) -> bytes:
    # up to and including the first empty line in any of the line ends the
    # parser knows (CRLF, LF, CR): the header fields it finds are the same
    ends = [i for i in (raw.find(b"\n\n"), raw.find(b"\r\r"), raw.find(b"\n\r")) if i >= 0]
    return raw[:min(ends) + 2] if ends else raw


#: a header section the parser splits no differently, but for bare CRs
#: (L{split_from_values} counts them): each line ends in CRLF (no other
#: LF), the first is a field, every other a field (name of printable ASCII
#: but ":", then ":") or a continuation (starts with a space or tab); no
#: "From " (mbox) line, no empty name.  (C{.*} rather than C{[^\r\n]*}:
#: several times faster in this pattern.)
_SIMPLE_SECTION = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:.*\r\n(?:[ \t].*\r\n)*)+")


def split_from_values(raw: bytes) -> tuple[str, ...] | None:
    """
    L{parsed_from_values} for a header section of well-formed CRLF lines
    (3 us rather than 30 for an smtp-source post's); None for any other
    (the parser's case).
    """
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return None
    section = raw[:end + 2]
    # every LF follows a CR (the pattern), and as many CRs as LFs: no bare CR
    if _SIMPLE_SECTION.fullmatch(section) is None or section.count(b"\r") != section.count(b"\n"):
        return None
    # a line that starts with "from:" is a From field (a continuation starts
    # with a blank); lowered[i + 1] is section[i]
    lowered = b"\n" + section.lower()
    values = []
    at = lowered.find(b"\nfrom:")
    while at >= 0:
        start = end = at + 5
        while True:  # the field's lines: its first, then its continuations
            end = section.find(b"\r\n", end)
            if section[end + 2:end + 3] not in (b" ", b"\t"):
                break
            end += 2
        # compat32's header_source_parse: the value without its leading
        # blanks and its last CRLF, decoded as BytesParser decodes it
        values.append(section[start:end].decode("ascii", "surrogateescape").lstrip(" \t"))
        at = lowered.find(b"\nfrom:", end + 1)
    return tuple(values)


@functools.lru_cache(maxsize=1024)
def _addresses_in(values: tuple[str, ...]) -> tuple[str, ...]:
    try:
        parsed = [str(default_policy.header_fetch_parse("From", v)) for v in values]
        return tuple(a.lower() for _, a in getaddresses(parsed) if a)
    except Exception:  # a From too broken to parse proves nothing
        return ()


@attrs.frozen
class Checked:
    #: the Authentication-Results value to store with the message
    header: str
    #: hold the post and ask the member
    hold: bool
    reason: str = ""


class SenderAuthentication:
    def __init__(self, authenticator: Authenticator, holds: Holds, unauthenticated: str,
                 authserv_id: str, relay_domain: str | None = None):
        self.authenticator = authenticator
        self.holds = holds
        self.unauthenticated = unauthenticated
        self.authserv_id = authserv_id
        #: the loop marker our copies carry (see emaild.inbound.classify)
        self.relay_domain = relay_domain or authserv_id

    async def check(self, envelope: Envelope, raw: bytes) -> Checked:
        """
        @raise Refused: 550 5.7.1 (not the member, or refused by policy),
            451 4.7.0 (DNS could not answer now).
        """
        relay = [r for r in envelope.recipients if r.purpose == RELAY]
        senders = from_addresses(raw)
        if len(set(senders)) != 1 or any(
                not r.member_email or r.member_email.lower() != senders[0] for r in relay):
            raise Refused(550, "5.7.1", NOT_THE_MEMBER)
        from_domain = senders[0].rpartition("@")[2]
        verdict = await self.authenticator.authenticate(
            peer=envelope.peer, helo=envelope.helo, mail_from=envelope.mail_from, raw=raw,
            from_domain=from_domain)
        decision = decide(verdict, self.unauthenticated)
        header = verdict.header(self.authserv_id)
        if decision.action != RELAY_DECISION:
            # a relayed post's verdict is stored with it (emaild inbound shows
            # it); what is held, refused or retried is said here
            log.info("inbound: sender authentication peer={peer} {decision}: {header}",
                     peer=envelope.peer, decision=decision.action, header=header)
        if decision.reply is not None:
            raise Refused(*decision.reply)
        if decision.action != HOLD:
            return Checked(header, False)
        reason = (f"{from_domain} does not vouch for it (no aligned SPF or DKIM pass, "
                  f"DMARC {verdict.dmarc.result})")
        if not_relayable(parse_message(raw), envelope.mail_from, self.relay_domain):
            # an auto-reply, a report, a loop: the relay processor ignores it
            # (and says why) whoever sent it, so nobody is asked about it
            return Checked(header, False, reason)
        return Checked(header, True, reason)

    async def hold(self, envelope: Envelope, raw: bytes, checked: Checked) -> int:
        member = next(r for r in envelope.recipients if r.purpose == RELAY)
        message = HeldMessage(
            peer=envelope.peer, helo=envelope.helo, tls=envelope.tls,
            mail_from=envelope.mail_from, recipients=tuple(envelope.recipients), raw=raw,
            authentication=checked.header, person_id=member.person_id,
            group_id=member.group_id, reason=checked.reason)
        return await self.holds.hold(message, member.member_email)

