"""
emaild's inbound SMTP server: the protocol that receives mail for the group
relay and hands each transaction to an L{IInboundHandler}.

It is its own line protocol rather than L{twisted.mail.smtp.ESMTP}, whose
server side answers a failed store with 550, falls back to command mode after
a long DATA line, executes plaintext commands pipelined after STARTTLS, and
neither advertises nor enforces SIZE (see PITFALLS.md).  Here:

  - commands run strictly in order; while the handler is deciding (RCPT,
    end of DATA) later lines wait in the buffer and the socket is paused;
  - DATA is read here: dot-unstuffed, counted, kept byte for byte with the
    CRLFs as received, and given to L{IInboundHandler.deliver} once per
    transaction with a C{Received:} header in front;
  - a failure to store is C{451 4.3.0}, never a 5xx, unless the handler
    raises L{Refused} with the reply it wants;
  - a line over L{COMMAND_LINE_LIMIT} (commands) or L{DATA_LINE_LIMIT}
    (message lines) is answered C{500 5.5.6} and the connection closed;
  - STARTTLS throws away whatever followed it in the buffer and forgets
    HELO/MAIL/RCPT;
  - sessions, recipients, commands, errors and idle time are all limited.
"""

from __future__ import annotations

import datetime
import email.utils
import re
from pathlib import Path
from typing import Callable

import attrs
from twisted.application import strports
from twisted.internet import defer
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from emaild.inbound.lines import COMMAND_LINE_LIMIT, DATA_LINE_LIMIT, LineSession
from emaild.inbound.syntax import is_mailbox, parse_path, printable
from emaild.inbound.tls import ensure_self_signed, tls_context_factory
from emaild.metrics import Metrics

__all__ = [
    "Refused", "Envelope", "IInboundHandler", "InboundFactory", "InboundSMTP",
    "tls_context_factory", "ensure_self_signed", "inbound_listener", "use_self_signed",
    "COMMAND_LINE_LIMIT", "DATA_LINE_LIMIT",
]

log = Logger()


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
    #: what check_recipient returned for each accepted RCPT, in order
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
        failure is answered C{451 4.3.0}.
        """

    def deliver(envelope: Envelope, raw: bytes) -> "defer.Deferred[str]":
        """
        Store the message durably; fire with an id to name in the 250 reply.
        L{Refused} is answered with its reply; any other failure with
        C{451 4.3.0} (never a 5xx).
        """


class InboundSMTP(LineSession):
    """
    One SMTP session.  Built by L{InboundFactory}.
    """

    def __init__(self, factory: InboundFactory):
        self.factory = factory
        self.handler = factory.handler
        self.name = factory.hostname
        self.max_errors = factory.max_errors
        self._tls = False
        self._helo: str | None = None
        self._esmtp = False
        self._commands = 0
        self._reset_transaction()

    # -- connection ------------------------------------------------------
    def connectionMade(self):
        super().connectionMade()
        if not self.factory.is_ready():  # e.g. the database is not migrated yet
            return self.close(421, "4.3.2 Service not yet ready, try again later")
        peer = self.transport.getPeer()
        self.peer = str(getattr(peer, "host", None) or getattr(peer, "name", None) or "local")
        self.factory.sessions.add(self)
        self.callLater = self.factory.reactor.callLater
        self.setTimeout(self.factory.idle_timeout or None)
        self.reply(220, f"{self.name} ESMTP")

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.factory.sessions.discard(self)
        if self.in_data:
            log.info("inbound: {peer} disconnected during DATA; nothing stored", peer=self.peer)

    def timeoutConnection(self):
        self.close(421, f"4.4.2 {self.name} Error: timeout exceeded")

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            self._data_line(line)
        else:
            self._command(line)

    def _reply_failure(self, failure: Failure, what: str) -> int:
        """Answer a handler failure; return the code sent."""
        refused = failure.check(Refused) and failure.value
        if refused and 400 <= int(refused.code) < 600:
            self.reply(int(refused.code), f"{refused.status} {refused.text}")
            return int(refused.code)
        log.failure("inbound: {what} failed for {peer}", failure, what=what, peer=self.peer)
        self.reply(451, "4.3.0 Temporary local problem, try again later")
        return 451

    # -- commands -------------------------------------------------------------
    def _command(self, line: bytes) -> None:
        self._commands += 1
        if self._commands > self.factory.max_commands:
            self.close(421, f"4.7.0 {self.name} Error: too many commands")
            return
        verb, _, arg = line.strip().partition(b" ")
        handler = getattr(self, "do_" + verb.decode("ascii", "replace").upper(), None)
        if handler is None or not verb.isalpha():
            self.reply(500, "5.5.2 Error: command not recognized")
            return
        handler(arg.strip())

    def _reset_transaction(self) -> None:
        self._mail_from: str | None = None
        self._recipients: list = []
        self._data_parts: list[bytes] = []
        self._data_size = 0
        self._too_big = False

    def do_HELO(self, arg: bytes, esmtp: bool = False) -> None:
        if not arg:
            self.reply(501, "5.5.4 Syntax: %s hostname" % ("EHLO" if esmtp else "HELO"))
            return
        self._helo = arg.decode("utf-8", "replace")
        self._esmtp = esmtp
        self._reset_transaction()
        name = self.name
        if not esmtp:
            self.reply(250, name)
            return
        ext = ["PIPELINING", f"SIZE {self.factory.max_message_size}", "8BITMIME",
               "ENHANCEDSTATUSCODES"]
        if self.factory.tls_context is not None and not self._tls:
            ext.append("STARTTLS")
        self.reply(250, name, *ext)

    def do_EHLO(self, arg: bytes) -> None:
        self.do_HELO(arg, esmtp=True)

    def do_MAIL(self, arg: bytes) -> None:
        if self._helo is None:
            self.reply(503, "5.5.1 Error: send HELO/EHLO first")
            return
        if self._mail_from is not None:
            self.reply(503, "5.5.1 Error: nested MAIL command")
            return
        match = re.match(rb"FROM:", arg, re.I)
        if not match:
            self.reply(501, "5.5.4 Syntax: MAIL FROM:<address>")
            return
        try:
            address, params = parse_path(arg[match.end():])
        except ValueError:
            self.reply(501, "5.1.7 Bad sender address syntax")
            return
        if address and not is_mailbox(address):
            self.reply(501, "5.1.7 Bad sender address syntax")
            return
        for param in params:
            key, _, value = param.partition(b"=")
            key = key.upper()
            if key == b"SIZE":
                if not value.isdigit():
                    self.reply(501, "5.5.4 Bad SIZE parameter")
                    return
                if int(value) > self.factory.max_message_size:
                    self.reply(552, "5.3.4 Message size exceeds fixed limit")
                    return
            elif key == b"BODY":
                if value.upper() not in (b"7BIT", b"8BITMIME"):
                    self.reply(501, "5.5.4 Bad BODY parameter")
                    return
            else:
                self.reply(555, "5.5.4 Unsupported parameter "
                            + key.decode("ascii", "replace")[:30])
                return
        self._mail_from = address
        self.reply(250, "2.1.0 Ok")

    def do_RCPT(self, arg: bytes) -> None:
        if self._mail_from is None:
            self.reply(503, "5.5.1 Error: need MAIL command")
            return
        match = re.match(rb"TO:", arg, re.I)
        if not match:
            self.reply(501, "5.5.4 Syntax: RCPT TO:<address>")
            return
        try:
            address, params = parse_path(arg[match.end():])
        except ValueError:
            self.reply(501, "5.1.3 Bad recipient address syntax")
            return
        if not (is_mailbox(address) or address.lower() == "postmaster"):
            self.reply(501, "5.1.3 Bad recipient address syntax")
            return
        if params:
            self.reply(555, "5.5.4 Unsupported parameter")
            return
        if len(self._recipients) >= self.factory.max_recipients:
            self.reply(452, "4.5.3 Error: too many recipients")
            return

        def checked(result):
            if isinstance(result, Failure):
                self._reply_failure(result, "recipient check")
            else:
                self._recipients.append(result)
                self.reply(250, "2.1.5 Ok")

        self.wait(defer.maybeDeferred(self.handler.check_recipient, address,
                                       self._mail_from), checked)

    def do_DATA(self, arg: bytes) -> None:
        if arg:
            self.reply(501, "5.5.4 Syntax: DATA")
        elif self._mail_from is None:
            self.reply(503, "5.5.1 Error: need MAIL command")
        elif not self._recipients:
            self.reply(554, "5.5.1 Error: no valid recipients")
        else:
            self.in_data = True
            self.reply(354, "End data with <CR><LF>.<CR><LF>")

    def _data_line(self, line: bytes) -> None:
        if line == b".":
            self.in_data = False
            self._end_of_data()
            return
        if line[:1] == b".":
            line = line[1:]
        self._data_size += len(line) + 2
        if self._too_big:
            return
        if self._data_size > self.factory.max_message_size:
            self._too_big = True
            self._data_parts = []  # keep reading to the dot, keep nothing
            return
        self._data_parts.append(line + b"\r\n")

    def _received_header(self) -> bytes:
        protocol = ("ESMTPS" if self._tls else "ESMTP") if self._esmtp else "SMTP"
        when = datetime.datetime.fromtimestamp(self.factory.reactor.seconds(),
                                               datetime.timezone.utc)
        header = (f"Received: from {printable(self._helo or '', 100)} ([{printable(self.peer)}])\r\n"
                  f"\tby {printable(self.name)} (emaild) with {protocol};\r\n"
                  f"\t{email.utils.format_datetime(when)}\r\n")
        return header.encode("ascii")

    def _end_of_data(self) -> None:
        mail_from, recipients = self._mail_from, tuple(self._recipients)
        size, too_big = self._data_size, self._too_big
        raw = self._received_header() + b"".join(self._data_parts)
        self._reset_transaction()

        def logged(code: int, result: str) -> None:
            log.info("inbound: peer={peer} from=<{mail_from}> rcpts={n} size={size} "
                     "result={code} {result}", peer=self.peer, mail_from=mail_from,
                     n=len(recipients), size=size, code=code, result=result)

        if too_big:
            self.reply(552, "5.3.4 Message size exceeds fixed limit")
            logged(552, "too big")
            self.factory.metrics.smtp_messages.labels("refused").inc()
            return
        envelope = Envelope(peer=self.peer, helo=self._helo or "", mail_from=mail_from,
                            recipients=recipients, tls=self._tls, size=size)

        def delivered(result):
            if isinstance(result, Failure):
                code = self._reply_failure(result, "delivery")
                logged(code, "refused" if result.check(Refused) else "failed")
                self.factory.metrics.smtp_messages.labels("refused").inc()
            else:
                queued = printable(result, 100)
                self.reply(250, f"2.0.0 Ok: queued as {queued}")
                logged(250, f"queued as {queued}")
                self.factory.metrics.smtp_messages.labels("accepted").inc()

        self.wait(defer.maybeDeferred(self.handler.deliver, envelope, raw), delivered)

    def do_RSET(self, arg: bytes) -> None:
        self._reset_transaction()
        self.reply(250, "2.0.0 Ok")

    def do_NOOP(self, arg: bytes) -> None:
        self.reply(250, "2.0.0 Ok")

    def do_VRFY(self, arg: bytes) -> None:
        self.reply(252, "2.5.0 Cannot VRFY user, but will accept message and attempt delivery")

    def do_EXPN(self, arg: bytes) -> None:
        self.reply(502, "5.5.1 Error: EXPN not available")

    def do_HELP(self, arg: bytes) -> None:
        self.reply(214, "2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP VRFY QUIT"
                    + (" STARTTLS" if self.factory.tls_context is not None else ""))

    def do_QUIT(self, arg: bytes) -> None:
        self.close(221, "2.0.0 Bye")

    def do_STARTTLS(self, arg: bytes) -> None:
        if self._tls:
            self.reply(503, "5.5.1 Error: TLS already active")
        elif arg:
            self.reply(501, "5.5.4 Syntax: STARTTLS")
        elif self.factory.tls_context is None or not ITLSTransport.providedBy(self.transport):
            self.reply(454, "4.7.0 TLS not available")
        else:
            self.reply(220, "2.0.0 Ready to start TLS")
            # Anything the client sent after STARTTLS came in clear: throw
            # it away (CVE-2011-0411), and start the session afresh.
            self.discard_input()
            self.transport.startTLS(self.factory.tls_context)
            self._tls = True
            self._helo = None
            self._esmtp = False
            self._reset_transaction()


class _TooBusy(Protocol):
    """Says 421 and hangs up: every session slot is taken."""

    def connectionMade(self):
        self.transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
        self.transport.loseConnection()


class InboundFactory(ServerFactory):
    """
    Builds L{InboundSMTP} sessions for C{handler} (an L{IInboundHandler}),
    at most C{max_sessions} at a time.
    """

    def __init__(self, handler, *, hostname: str, max_sessions: int = 40,
                 max_message_size: int = 10 * 2**20, idle_timeout: float = 300,
                 max_recipients: int = 100, max_commands: int = 1000,
                 max_errors: int = 20, tls_context=None, reactor=None, metrics=None,
                 is_ready: Callable[[], bool] = lambda: True):
        if reactor is None:
            from twisted.internet import reactor
        self.is_ready = is_ready
        self.handler = handler
        self.hostname = hostname
        self.max_sessions = max_sessions
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self.max_recipients = max_recipients
        self.max_commands = max_commands
        self.max_errors = max_errors
        self.tls_context = tls_context
        self.reactor = reactor
        self.metrics = metrics if metrics is not None else Metrics()
        #: the sessions now open
        self.sessions: set[InboundSMTP] = set()

    def buildProtocol(self, addr):
        if len(self.sessions) >= self.max_sessions:
            log.warn("inbound: {n} sessions open; refusing {addr}", n=len(self.sessions),
                     addr=getattr(addr, "host", addr))
            p = _TooBusy()
            self.metrics.smtp_sessions.labels("too_busy").inc()
        else:
            p = InboundSMTP(self)
            self.metrics.smtp_sessions.labels("accepted").inc()
        p.factory = self
        return p


def inbound_listener(config, handler, reactor, metrics=None,
                     is_ready: Callable[[], bool] = lambda: True):
    """
    The inbound SMTP server as a service listening on C{smtp.endpoint}, with
    the configured limits and certificate.  Without a configured
    certificate, STARTTLS is offered once L{use_self_signed} has made one in
    the state directory (the daemon calls it after dropping privileges, so
    the files belong to the service user).
    """
    from emaild.config import ConfigError

    smtp = config["smtp"]
    tls_context = None
    if smtp["tls_certificate"]:
        tls_context = tls_context_factory(smtp["tls_certificate"],
                                          smtp["tls_key"] or smtp["tls_certificate"])
    elif smtp["tls_key"]:
        raise ConfigError("smtp.tls_key", "is set without smtp.tls_certificate")
    factory = InboundFactory(
        handler,
        hostname=_hostname(config),
        max_sessions=smtp["max_sessions"],
        max_message_size=smtp["max_message_size"],
        idle_timeout=smtp["idle_timeout"],
        max_recipients=smtp["max_recipients"],
        max_commands=smtp["max_commands"],
        max_errors=smtp["max_errors"],
        tls_context=tls_context,
        reactor=reactor,
        metrics=metrics,
        is_ready=is_ready,
    )
    return strports.service(smtp["endpoint"], factory, reactor=reactor)


def _hostname(config) -> str:
    return config["smtp"]["hostname"] or config["smtp"]["relay_domain"]


def use_self_signed(config, listener) -> None:
    """
    Give the listener a self-signed certificate from the state directory
    (made on first start) unless one is configured.
    """
    factory = listener.factory
    if factory.tls_context is None:
        certificate, key = ensure_self_signed(Path(config.state_dir), _hostname(config))
        factory.tls_context = tls_context_factory(certificate, key)
