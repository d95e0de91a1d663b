"""
A small SMTP client protocol: one instance per connection to the relay.

The transport (L{emaild.outbound.smtp}) drives it: L{SMTPClientProtocol.start}
(greeting, EHLO, STARTTLS, AUTH; async), L{SMTPClientProtocol.send} (one
message; its outcome goes to a callback, and C{on_ready} says when the next
message may follow) and L{SMTPClientProtocol.quit}.  We do not use
twisted.mail's ESMTPSenderFactory: it cannot pipeline, its retries can
resend a message, it mangles CRLF input and dot-stuffs per 16 KiB chunk,
and it can leave Deferreds pending for ever (see docs/smtp-protocols.md and
the known traps in docs/design.md).

Every reply we wait for is an entry in a L{ReplyQueue}
(L{emaild.outbound.smtpreplies}), which answers every entry: with the
relay's reply, or with a L{Reply} whose C{code} is None saying what
happened instead.
"""

from __future__ import annotations

import base64

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from emaild.outbound.smtpreplies import ReplyQueue, describe_loss, escape_format
from emaild.outbound.smtpwire import (
    Reply,
    SessionFailed,
    Transaction,
    end_of_data_result,
    parse_ehlo,
    prepare_data,
    refusal_result,
    reply_text,
    retry,
)
from emaild.outbound.transport import DeliveryResult


@implementer(IHandshakeListener)
class SMTPClientProtocol(LineReceiver):
    """
    One session with the relay.

    Messages go through L{send}.  With PIPELINING (RFC 2920) a message costs
    one round trip: when the relay's 354 for message N arrives, N's data and
    final dot leave together with message N+1's MAIL, RCPT and DATA (section
    3.1: the transfer of message content may be the first "command" of a
    group, and DATA must be the last), so at most one group -- N's end of
    data plus N+1's three commands -- awaits replies.  Without PIPELINING
    every command waits for its reply (lock step).  Replies are matched to
    commands in the order they were sent; each message's outcome is decided
    by its own replies only, and a message whose end-of-data reply never
    came is never SENT.
    """

    # Split on LF and strip CR ourselves: tolerates relays ending lines with LF.
    delimiter = b"\n"
    MAX_LENGTH = 65536

    def __init__(self, reactor, host: str, reply_timeout: float,
                 data_timeout: float, implicit_tls: bool = False):
        self.reactor = reactor
        self.host = host
        self.reply_timeout = reply_timeout
        self.data_timeout = data_timeout
        self.log = Logger(namespace="emaild.outbound.smtp")
        self.extensions: dict[str, str] = {}
        self.pipelining = False
        self.connected_ = False
        #: the session must end after the current message (421, confusion)
        self.broken = False
        #: L{send} may be called now (set up, and the previous message is
        #: far enough along)
        self.accepting = False
        #: called (no arguments) once the connection is lost
        self.on_lost = None
        #: called (no arguments) whenever L{accepting} becomes true
        self.on_ready = None
        self._replies = ReplyQueue(reactor, self._timed_out)
        self._pending: list[str] = []
        self._lost_text: str | None = None
        self._tls_started = implicit_tls
        self._tls_done = False
        self._closed_waiters: list[Deferred] = []
        self._drain_waiters: list[Deferred] = []
        self._greeting: Deferred | None = None
        #: writes held back while a chunk of replies is handled (see dataReceived)
        self._corked: list[bytes] | None = None
        #: messages handed to L{send} whose outcome is not known yet
        self.unfinished = 0

    # -- connection events -------------------------------------------
    def connectionMade(self):
        self.connected_ = True
        # Every group of commands goes out in one write and then waits for
        # replies, so Nagle's algorithm has nothing to coalesce; it would
        # only hold back the last segment of a message longer than one
        # segment (the final dot and the next envelope) until the relay
        # acknowledged the rest: a round trip more per message.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass  # not a TCP socket after all; Nagle costs time, not mail
        self._greeting = self._expect("greeting")

    def handshakeCompleted(self):
        self._tls_done = True
        try:
            version = self.transport.getHandle().get_protocol_version_name()
        except Exception:
            version = "TLS"
        self.log.info("{version} established with {host}", version=version, host=self.host)

    def connectionLost(self, reason):
        self.connected_ = False
        self.accepting = False
        self._replies.cancel_timer()
        if self._lost_text is None:
            self._lost_text = describe_loss(reason, self.host, self._tls_started, self._tls_done)
        if self.on_lost is not None:
            # first, so that whoever hears of the outcomes below does not
            # hand this connection another message
            self.on_lost()
        self._replies.fail_all(self._lost_text)
        closed, self._closed_waiters = self._closed_waiters, []
        for d in closed:
            d.callback(None)

    def abort(self, text: str):
        """Drop the connection now; waiters get C{text} (may use {step})."""
        if self._lost_text is None:
            self._lost_text = text
        if self.transport is not None and self.connected_:
            self.transport.abortConnection()

    def when_closed(self) -> Deferred:
        d = Deferred()
        if self.connected_:
            self._closed_waiters.append(d)
        else:
            d.callback(None)
        return d

    # -- replies -------------------------------------------------------
    def dataReceived(self, data: bytes):
        # What the replies in this chunk make us send (with PIPELINING: one
        # message's data and the next one's MAIL, RCPT, DATA) leaves in one
        # write: one transport write and socket send per message.
        self._corked = []
        try:
            super().dataReceived(data)
        finally:
            self._uncork()

    def _uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked and self.connected_:
            self.transport.write(b"".join(corked))

    def lineReceived(self, line: bytes):
        if self._lost_text is not None:
            return  # we are dropping the connection; what follows is moot
        if line[-1:] == b"\r":
            line = line[:-1]
        separator = line[3:4]
        if separator == b" " and not self._pending and line[:3].isdigit():
            # the common case: a one-line reply
            reply = Reply(int(line[:3]), (reply_text(line[4:]),))
            self._replied(reply)
            return
        if len(line) < 3 or not line[:3].isdigit() or separator not in (b" ", b"-", b""):
            text = reply_text(line)
            self.log.warn("garbled reply from {host}: {line!r}", host=self.host, line=text)
            self.abort("relay sent a garbled reply during {step}: " + escape_format(repr(text)))
            return
        self._pending.append(reply_text(line[4:]))
        if separator == b"-":
            return
        reply = Reply(int(line[:3]), tuple(self._pending))
        self._pending = []
        self._replied(reply)

    def _replied(self, reply: Reply) -> None:
        if reply.code == 421:
            self.broken = True  # the relay is closing the session (RFC 5321 3.8)
        if not self._replies.answer(reply):
            self.log.warn("unexpected reply from {host}: {reply}", host=self.host, reply=str(reply))
            if reply.code == 421:
                self._uncork()
                self.transport.loseConnection()

    def lineLengthExceeded(self, line):
        self.abort("relay sent an over-long reply line during {step}")

    def _await(self, step: str, timeout: float, handler, argument) -> None:
        """Wait for one more reply; C{handler(argument, reply)} gets it."""
        if not self.connected_:
            text = (self._lost_text or "connection lost during {step}").format(step=step)
            handler(argument, Reply(None, (text,)))
            return
        self._replies.expect(step, timeout, handler, argument)

    def _expect(self, step: str, timeout: float | None = None) -> Deferred:
        d = Deferred()
        self._await(step, timeout or self.reply_timeout, Deferred.callback, d)
        return d

    def _timed_out(self, step: str, timeout: float):
        self.log.warn("{host}: no reply to {step} within {timeout}s", host=self.host,
                      step=step, timeout=timeout)
        self.abort(f"timed out after {timeout:g}s waiting for the reply to {step}")

    def _write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
        elif self.connected_:
            self.transport.write(data)

    async def _command(self, command: bytes, step: str) -> Reply:
        d = self._expect(step)
        self._write(command + b"\r\n")
        return await d

    # -- session setup -------------------------------------------------
    async def start(self, helo_name: bytes, tls_options, username, password):
        """Greeting, EHLO, STARTTLS (when C{tls_options}), AUTH; raises L{SessionFailed}."""
        reply = await self._greeting
        self._require(reply, (220,), "greeting")
        await self._ehlo(helo_name)
        if tls_options is not None:
            if "STARTTLS" not in self.extensions:
                raise SessionFailed(retry(
                    f"relay {self.host} offers no STARTTLS and TLS is required; "
                    "nothing was sent in clear"))
            self._require(await self._command(b"STARTTLS", "STARTTLS"), (220,), "STARTTLS")
            if self.clearLineBuffer():
                # Anything after the 220 arrived in clear and must not be read
                # as if it came over TLS (STARTTLS injection, CVE-2011-0411).
                self.abort("relay sent data in clear after its STARTTLS reply")
                raise SessionFailed(retry("relay sent data in clear after its STARTTLS reply"))
            self._tls_started = True
            self._uncork()  # nothing is pending; but never let clear text follow TLS
            self.transport.startTLS(tls_options)
            await self._ehlo(helo_name)  # RFC 3207: forget what we knew before TLS
        if username is not None:
            await self._auth(username, password or b"")
        self.pipelining = "PIPELINING" in self.extensions
        self.accepting = self.connected_

    def _require(self, reply: Reply, codes, step: str):
        if reply.code in codes:
            return
        if reply.code is None:
            raise SessionFailed(retry(reply.text))
        if reply.code == 421:
            self.broken = True
        raise SessionFailed(retry(f"{step}: {reply}", reply.code))

    async def _ehlo(self, helo_name: bytes):
        reply = await self._command(b"EHLO " + helo_name, "EHLO")
        if reply.code is not None and 500 <= reply.code < 600:
            reply = await self._command(b"HELO " + helo_name, "HELO")
            self._require(reply, (250,), "HELO")
            self.extensions = {}
            return
        self._require(reply, (250,), "EHLO")
        self.extensions = parse_ehlo(reply)

    async def _auth(self, username: bytes, password: bytes):
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms:
            token = base64.b64encode(b"\0" + username + b"\0" + password)
            reply = await self._command(b"AUTH PLAIN " + token, "AUTH")
        elif "LOGIN" in mechanisms:
            reply = await self._command(b"AUTH LOGIN", "AUTH")
            for secret in (username, password):
                if reply.code != 334:
                    break
                reply = await self._command(base64.b64encode(secret), "AUTH")
        else:
            offered = self.extensions.get("AUTH")
            raise SessionFailed(retry(
                f"relay {self.host} offers no AUTH PLAIN or LOGIN (AUTH: {offered or 'none'})"))
        if reply.code == 535:
            raise SessionFailed(retry(f"relay refused our credentials: {reply}", 535))
        self._require(reply, (235,), "AUTH")

    # -- messages --------------------------------------------------------
    def send(self, message, finish) -> None:
        """
        Start one transaction (only while L{accepting}): MAIL, RCPT, DATA
        (in one write with PIPELINING), the data, and RSET if it stopped part
        way.  C{finish(result)} is called exactly once with the message's
        L{DeliveryResult}; C{on_ready} is called when the next message may
        follow (with PIPELINING: as soon as this one's data is written).
        """
        self.accepting = False
        self.unfinished += 1
        data = prepare_data(message.data)
        extensions = self.extensions
        params = b""
        if "SIZE" in extensions:
            params = b" SIZE=%d" % len(data)
        if "8BITMIME" in extensions and not message.data.isascii():
            params += b" BODY=8BITMIME"
        mail = b"MAIL FROM:<%s>%s\r\n" % (message.sender.encode(), params)
        txn = Transaction(message, finish, data, b"RCPT TO:<%s>\r\n" % message.recipient.encode())
        timeout = self.reply_timeout
        if self.pipelining:
            self._write(mail + txn.rcpt + b"DATA\r\n")
            self._await("MAIL FROM", timeout, self._on_mail, txn)
            self._await("RCPT TO", timeout, self._on_rcpt, txn)
            self._await("DATA", timeout, self._on_data, txn)
        else:
            self._write(mail)
            self._await("MAIL FROM", timeout, self._on_mail, txn)

    def _on_mail(self, txn: Transaction, reply: Reply) -> None:
        if reply.code != 250:
            self._refused(txn, "MAIL FROM", reply)
        elif not self.pipelining:
            self._write(txn.rcpt)
            self._await("RCPT TO", self.reply_timeout, self._on_rcpt, txn)

    def _on_rcpt(self, txn: Transaction, reply: Reply) -> None:
        if reply.code != 250 and reply.code != 251:
            self._refused(txn, "RCPT TO", reply)
        elif not self.pipelining:
            self._write(b"DATA\r\n")
            self._await("DATA", self.reply_timeout, self._on_data, txn)

    def _on_data(self, txn: Transaction, reply: Reply) -> None:
        if reply.code == 354:
            if txn.result is None:
                data, txn.data = txn.data, None
                self._write(data)
                self._await("DATA (end of message)", self.data_timeout, self._on_end, txn)
                if self.pipelining:
                    self._ready()
            else:
                # A pipelined DATA was accepted though MAIL or RCPT was not:
                # end it with an empty message (RFC 2920 3.1), which the
                # relay refuses for want of recipients.
                self._write(b".\r\n")
                self._await("DATA (end of empty message)", self.reply_timeout,
                            self._reset, txn)
            return
        if reply.code is None:
            self._finish(txn, txn.result or retry(reply.text))
            return
        if txn.result is None:
            txn.result = self._failed("DATA", reply)
        self._reset(txn, reply)

    def _on_end(self, txn: Transaction, reply: Reply) -> None:
        self._finish(txn, self._final(reply))
        if not self.pipelining and reply.code is not None:
            self._ready()

    def _refused(self, txn: Transaction, step: str, reply: Reply) -> None:
        if reply.code is None:
            self.broken = True
            self._finish(txn, txn.result or retry(reply.text))
            return
        if txn.result is None:
            txn.result = self._failed(step, reply)
        if not self.pipelining:
            self._reset(txn, reply)
        # pipelined: the rest of the group's replies are still to come, and
        # _on_data sees the last one

    def _reset(self, txn: Transaction, reply: Reply) -> None:
        """The transaction stopped before its data: report it, then RSET."""
        self._finish(txn, txn.result or retry(reply.text))
        if self.broken or not self.connected_:
            self._ready()  # the transport ends the session
            return
        self._write(b"RSET\r\n")
        self._await("RSET", self.reply_timeout, self._on_rset, None)

    def _on_rset(self, _, reply: Reply) -> None:
        if reply.code != 250:
            self.broken = True
        if reply.code is not None:
            self._ready()

    def _ready(self) -> None:
        self.accepting = self.connected_
        if self.on_ready is not None:
            self.on_ready()

    def _finish(self, txn: Transaction, result: DeliveryResult) -> None:
        if txn.done:
            return
        txn.done = True
        self.unfinished -= 1
        txn.finish(result)
        if not self.unfinished and self._drain_waiters:
            waiters, self._drain_waiters = self._drain_waiters, []
            for d in waiters:
                d.callback(None)

    @property
    def awaiting(self) -> int:
        """How many replies we are waiting for (commands in flight)."""
        return len(self._replies)

    def drained(self) -> Deferred:
        """Fires once every message handed to L{send} has its outcome."""
        d = Deferred()
        if self.unfinished:
            self._drain_waiters.append(d)
        else:
            d.callback(None)
        return d

    def _final(self, reply: Reply) -> DeliveryResult:
        result, broken = end_of_data_result(reply)
        self.broken = self.broken or broken
        return result

    def _failed(self, step: str, reply: Reply) -> DeliveryResult:
        result, broken = refusal_result(step, reply)
        self.broken = self.broken or broken
        return result

    async def quit(self):
        """Say QUIT, then close; bounded by the reply timeout."""
        if self.connected_:
            await self._command(b"QUIT", "QUIT")
        if self.connected_:
            self._uncork()
            self.transport.loseConnection()
            closed = self.when_closed()
            # A TLS close can wait for the peer; do not let it hang close().
            timer = self.reactor.callLater(self.reply_timeout, self.abort, "closing")
            await closed
            if timer.active():
                timer.cancel()
