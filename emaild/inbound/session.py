"""
One inbound SMTP session: the protocol that receives mail for the group
relay and hands each transaction to an L{IInboundHandler}.  Its factory,
limits and listener are in L{emaild.inbound.server}.

It is its own protocol rather than L{twisted.mail.smtp.ESMTP}, whose
server side answers a failed store with 550, falls back to command mode after
a long DATA line, executes plaintext commands pipelined after STARTTLS, and
neither advertises nor enforces SIZE.  Here:

  - commands run strictly in order; while the handler is deciding (RCPT,
    end of DATA) later lines wait in the buffer and the socket is paused;
  - every envelope field is checked when it arrives (L{emaild.inbound.syntax}):
    nothing the store cannot keep is answered 250;
  - a repeated RCPT for one recipient is answered 250 and kept once;
  - DATA is read here: dot-unstuffed, counted, kept byte for byte with the
    CRLFs as received, and given to L{IInboundHandler.deliver} once per
    transaction with a C{Received:} header in front;
  - a failure to store is C{451 4.3.0}, never a 5xx, unless the handler
    raises L{Refused} with the reply it wants;
  - a line over L{COMMAND_LINE_LIMIT} (commands) or L{DATA_LINE_LIMIT}
    (message lines) is answered C{500 5.5.6} and the connection closed;
  - STARTTLS throws away whatever followed it in the buffer and forgets
    HELO/MAIL/RCPT;
  - each command line and each DATA phase has a deadline on the reactor's
    clock (a trickle of bytes cannot hold a session), besides the idle
    timeout; recipients, commands and errors are limited.
"""

from __future__ import annotations

import datetime
import email.utils
import functools

from twisted.internet import defer
from twisted.internet.interfaces import ITLSTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from emaild.inbound.inflow import admission
from emaild.inbound.interfaces import Envelope, Refused
from emaild.inbound.limits import client_address
from emaild.inbound.lines import LineSession
from emaild.inbound.syntax import (
    FieldError,
    check_address,
    check_helo,
    check_line,
    check_mail_parameters,
    check_rcpt_parameters,
    parse_parameters,
    parse_path,
    printable,
)

log = Logger()


@functools.lru_cache(maxsize=2)
def _date(second: int) -> str:
    """The RFC 5322 date of a second (many messages arrive within one)."""
    return email.utils.format_datetime(
        datetime.datetime.fromtimestamp(second, datetime.timezone.utc))


class InboundSMTP(LineSession):
    """
    One SMTP session.  Built by L{InboundFactory}.
    """

    def __init__(self, factory):
        self.factory = factory
        self.handler = factory.handler
        self.name = factory.hostname
        self.max_errors = factory.max_errors
        self._tls = False
        self._helo: str | None = None
        self._esmtp = False
        self._commands = 0
        self._deadline = None
        #: waiting for the handler (the client's deadline does not count)
        self._deciding = False
        self._reset_transaction()

    # -- connection ------------------------------------------------------
    def connectionMade(self):
        super().connectionMade()
        self.peer = client_address(self.transport.getPeer())
        self.callLater = self.factory.reactor.callLater  # TimeoutMixin's clock
        self.factory.session_opened(self)
        self.setTimeout(self.factory.idle_timeout or None)
        self.reply(220, f"{self.name} ESMTP")
        self._expect_command()

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self._stop_deadline()
        self.factory.session_closed(self)
        if self.in_data:
            log.info("inbound: {peer} disconnected during DATA; nothing stored", peer=self.peer)

    def close(self, code: int, text: str) -> None:
        super().close(code, text)
        # the last reply went out at once (see LineSession._write), and the
        # client may connect again as soon as it reads it, before the
        # reactor closes this socket: its slot is free now
        self.factory.session_closed(self)

    def timeoutConnection(self):
        self.close(421, f"4.4.2 {self.name} Error: timeout exceeded")

    # -- deadlines: a trickle of bytes cannot hold a command or DATA open --
    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _start_deadline(self, seconds: float, what: str) -> None:
        deadline = self._deadline
        if deadline is not None and deadline.active():
            if seconds and not self._closing:
                # move the pending call (cheaper than a new one per command)
                deadline.args = (what,)
                deadline.reset(seconds)
                return
            deadline.cancel()
        self._deadline = None
        if seconds and not self._closing:
            self._deadline = self.factory.reactor.callLater(seconds, self._deadline_passed,
                                                            what)

    def _deadline_passed(self, what: str) -> None:
        self._deadline = None
        if self._deciding:
            return  # our time, not the client's: the wait's end starts the next
        log.info("inbound: {peer}: {what} took too long; closing", peer=self.peer, what=what)
        self.close(421, f"4.4.2 {self.name} Error: {what} took too long")

    def _expect_command(self) -> None:
        """The next command line must be complete within command_timeout."""
        self._start_deadline(self.factory.command_timeout, "command")

    def _wait(self, d, then) -> None:
        """
        L{wait}, with no deadline on the client while we decide: the
        command's deadline is ignored meanwhile rather than cancelled (and
        moved on at the end, which costs less than a cancel and a new call
        per RCPT).
        """
        self._deciding = True

        def done(result):
            self._deciding = False
            then(result)
            if not self.in_data:
                self._expect_command()

        self.wait(d, done)

    def line(self, line: bytes) -> None:
        self._command(line)
        if not (self.in_data or self.waiting):
            self._expect_command()

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
        verb, _, arg = line.strip(b" ").partition(b" ")
        name = verb.upper().decode("ascii") if verb.isascii() and verb.isalpha() else None
        handler = getattr(self, "do_" + name, None) if name else None
        try:
            check_line(line, f"{name} command" if handler else "The command")
            if handler is None:
                self.reply(500, "5.5.2 Error: command not recognized")
                return
            handler(arg.strip(b" "))
        except FieldError as e:
            self.reply(e.code, f"{e.status} {e.text}")

    def _reset_transaction(self) -> None:
        self._mail_from: str | None = None
        self._recipients: list = []
        self._rcpt_seen: set[str] = set()
        self._data_parts: list[bytes] = []
        self._data_size = 0
        self._too_big = False

    def do_HELO(self, arg: bytes, esmtp: bool = False) -> None:
        self._helo = check_helo(arg, "EHLO" if esmtp else "HELO")
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
        if arg[:5].upper() != b"FROM:":  # ASCII case only, as re.I on bytes
            self.reply(501, "5.5.4 Syntax: MAIL FROM:<address>")
            return
        try:
            address, params = parse_path(arg[5:])
        except ValueError:
            self.reply(501, "5.1.7 Bad sender address syntax")
            return
        address = check_address(address, "5.1.7", empty_ok=True)
        check_mail_parameters(parse_parameters(params), self.factory.max_message_size)
        # in-flow control: slower (or 451) while the relay processor is behind
        waiting = admission(self.factory.inflow)
        if waiting is None:
            self._mail_from = address
            self.reply(250, "2.1.0 Ok")
            return

        def admitted(result):
            if isinstance(result, Failure):
                self._reply_failure(result, "admission")
                return
            self._mail_from = address
            self.reply(250, "2.1.0 Ok")

        self._wait(waiting, admitted)

    def do_RCPT(self, arg: bytes) -> None:
        if self._mail_from is None:
            self.reply(503, "5.5.1 Error: need MAIL command")
            return
        if arg[:3].upper() != b"TO:":
            self.reply(501, "5.5.4 Syntax: RCPT TO:<address>")
            return
        try:
            address, params = parse_path(arg[3:])
        except ValueError:
            self.reply(501, "5.1.3 Bad recipient address syntax")
            return
        if address.lower() != "postmaster":
            address = check_address(address, "5.1.3")
        check_rcpt_parameters(parse_parameters(params))
        # The same address again: one recipient (250, kept once), without
        # asking the handler again.  Case is folded: reply and bounce
        # addresses are case-insensitive; unsubscribe tokens are not, but
        # two live ones that differ only in case are as likely as guessing
        # one (each carries random bits).  Results that compare equal (any
        # other spelling of one mailbox) are kept once too.
        if address.lower() in self._rcpt_seen:
            self.reply(250, "2.1.5 Ok (already a recipient)")
            return
        if len(self._recipients) >= self.factory.max_recipients:
            self.reply(452, "4.5.3 Error: too many recipients")
            return

        def checked(result):
            if isinstance(result, Failure):
                self._reply_failure(result, "recipient check")
                return
            self._rcpt_seen.add(address.lower())
            if result in self._recipients:
                self.reply(250, "2.1.5 Ok (already a recipient)")
            else:
                self._recipients.append(result)
                self.reply(250, "2.1.5 Ok")

        self._wait(defer.maybeDeferred(self.handler.check_recipient, address,
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
            self._start_deadline(self.factory.data_timeout, "DATA")

    def message_data(self, data: bytes) -> None:
        self._data_size += len(data)
        if self._too_big:
            return
        if self._data_size > self.factory.max_message_size:
            self._too_big = True
            self._data_parts = []  # keep reading to the dot, keep nothing
            return
        self._data_parts.append(data)

    def message_end(self) -> None:
        self._stop_deadline()
        self._end_of_data()

    def _received_header(self) -> bytes:
        protocol = ("ESMTPS" if self._tls else "ESMTP") if self._esmtp else "SMTP"
        header = (f"Received: from {printable(self._helo or '', 100)} ([{printable(self.peer)}])\r\n"
                  f"\tby {printable(self.name)} (emaild) with {protocol};\r\n"
                  f"\t{_date(int(self.factory.reactor.seconds()))}\r\n")
        return header.encode("ascii")

    def _end_of_data(self) -> None:
        mail_from, recipients = self._mail_from, tuple(self._recipients)
        size, too_big = self._data_size, self._too_big
        raw = self._received_header() + b"".join(self._data_parts)
        self._reset_transaction()

        def logged(code: int, result: str) -> None:
            # one line per message: formatted here, the observer's format
            # then has one field rather than six (about 40% of the event's
            # cost); the fields stay in the event for structured observers
            n = len(recipients)
            log.info("inbound: {summary}", summary=(
                f"peer={self.peer} from=<{mail_from}> rcpts={n} size={size} "
                f"result={code} {result}"), peer=self.peer, mail_from=mail_from, n=n,
                size=size, code=code, result=result)

        if too_big:
            self.reply(552, "5.3.4 Message size exceeds fixed limit")
            logged(552, "too big")
            self.factory.metrics.smtp_messages.labels("refused").inc()
            self._expect_command()
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

        self._wait(defer.maybeDeferred(self.handler.deliver, envelope, raw), delivered)

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
            self.start_tls(self.factory.tls_context)
            self._tls = True
            self._helo = None
            self._esmtp = False
            self._reset_transaction()
