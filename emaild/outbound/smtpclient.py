"""
A small SMTP client protocol: one instance per connection to the relay.

The transport (L{emaild.outbound.smtp}) drives it through three async
methods: L{SMTPClientProtocol.start} (greeting, EHLO, STARTTLS, AUTH),
L{SMTPClientProtocol.send} (one message, answered with a L{DeliveryResult})
and L{SMTPClientProtocol.quit}.  We do not use twisted.mail's
ESMTPSenderFactory: its retries can resend a message, it mangles CRLF input
and dot-stuffs per 16 KiB chunk, and it can leave Deferreds pending for ever
(see docs/smtp-protocols.md and the known traps in docs/design.md).

Every reply we wait for is a Deferred in a FIFO (replies come back in order,
which also makes PIPELINING easy) guarded by a timer; a waiter never fails:
when the connection is lost or a timer fires it gets a L{Reply} whose C{code}
is None and whose text says what happened.
"""

from __future__ import annotations

import base64
import collections
import re

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from emaild.outbound.transport import DeliveryResult, Outcome


@attrs.frozen
class Reply:
    #: None when no reply came (connection lost, timeout); text says why
    code: int | None
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return self.text if self.code is None else f"{self.code} {self.text}"


class SessionFailed(Exception):
    """The session could not be set up; C{result} is for the messages it had."""

    def __init__(self, result: DeliveryResult):
        super().__init__(result.reply)
        self.result = result


def retry(reply: str, code: int | None = None) -> DeliveryResult:
    return DeliveryResult(Outcome.RETRY, code, reply)


def prepare_data(data: bytes) -> bytes:
    """
    Turn a message into what goes on the wire after DATA: every line ending
    (CRLF, LF or lone CR) becomes CRLF, every line starting with "." gets
    another "." (RFC 5321 4.5.2), the data ends with CRLF, then ".\\r\\n".
    Done over the whole message at once so no chunk boundary can hide a ".".
    """
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    data = data.replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def classify(code: int, text: str) -> Outcome:
    """What a relay's reply means for the message (SES wording for 454)."""
    if 200 <= code < 300:
        return Outcome.SENT
    lowered = text.lower()
    if code == 454 and "throttling failure" in lowered and "daily message quota exceeded" in lowered:
        return Outcome.QUOTA
    if code == 454 and ("throttling" in lowered or "rate exceeded" in lowered):
        return Outcome.THROTTLED
    if 500 <= code < 600:
        return Outcome.FAILED
    return Outcome.RETRY  # 4xx, and codes that make no sense here


_UNSAFE = re.compile(r"[\s<>\x00-\x1f\x7f]")


def address_problem(address: str, role: str) -> str | None:
    """Why C{address} must not go into MAIL/RCPT (command injection), or None."""
    if not isinstance(address, str):
        return f"{role} address {address!r} is not a string"
    if _UNSAFE.search(address):
        return (f"refusing {role} address {address!r}: it contains whitespace, "
                "a control character, '<' or '>'")
    if not address.isascii():
        return f"refusing {role} address {address!r}: not ASCII (no SMTPUTF8 support)"
    if role == "recipient" and "@" not in address:
        return f"refusing recipient address {address!r}: no domain"
    return None


def _esc(text: str) -> str:
    """Protect text that goes into a str.format template."""
    return text.replace("{", "{{").replace("}", "}}")


@attrs.define
class _Waiter:
    step: str
    timeout: float
    d: Deferred


@implementer(IHandshakeListener)
class SMTPClientProtocol(LineReceiver):
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
        self.connected_ = False
        #: the session must end after the current message (421, confusion)
        self.broken = False
        #: called (no arguments) once the connection is lost
        self.on_lost = None
        #: called with this protocol once connected (greeting not yet read)
        self.on_made = None
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._timer = None
        self._pending: list[str] = []
        self._lost_text: str | None = None
        self._tls_started = implicit_tls
        self._tls_done = False
        self._closed_waiters: list[Deferred] = []
        self._greeting: Deferred | None = None

    # -- connection events -------------------------------------------
    def connectionMade(self):
        self.connected_ = True
        self._greeting = self._expect("greeting")
        if self.on_made is not None:
            self.on_made(self)

    def handshakeCompleted(self):
        self._tls_done = True
        try:
            version = self.transport.getHandle().get_protocol_version_name()
        except Exception:
            version = "TLS"
        self.log.info("{version} established with {host}", version=version, host=self.host)

    def connectionLost(self, reason):
        self.connected_ = False
        self._cancel_timer()
        if self._lost_text is None:
            self._lost_text = self._describe_loss(reason)
        waiters, self._waiters = self._waiters, collections.deque()
        for w in waiters:
            w.d.callback(Reply(None, (self._lost_text.format(step=w.step),)))
        closed, self._closed_waiters = self._closed_waiters, []
        for d in closed:
            d.callback(None)
        if self.on_lost is not None:
            self.on_lost()

    def _describe_loss(self, reason) -> str:
        detail = _esc(reason.getErrorMessage())
        if self._tls_started and not self._tls_done:
            if "VerificationError" in repr(reason.value):
                return (f"certificate check failed for relay {self.host}: the certificate"
                        f" is not valid for this host name ({detail})")
            if "certificate" in detail.lower():
                return f"certificate check failed for relay {self.host}: {detail}"
            return f"TLS handshake with relay {self.host} failed: {detail}"
        return "connection lost during {step}: " + detail

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
    def lineReceived(self, line: bytes):
        if self._lost_text is not None:
            return  # we are dropping the connection; what follows is moot
        line = line.rstrip(b"\r")
        text = line.decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
            self.log.warn("garbled reply from {host}: {line!r}", host=self.host, line=text)
            self.abort("relay sent a garbled reply during {step}: " + _esc(repr(text)))
            return
        self._pending.append(text[4:])
        if text[3:4] == "-":
            return
        reply = Reply(int(text[:3]), tuple(self._pending))
        self._pending = []
        if reply.code == 421:
            self.broken = True  # the relay is closing the session (RFC 5321 3.8)
        if not self._waiters:
            self.log.warn("unexpected reply from {host}: {reply}", host=self.host, reply=str(reply))
            if reply.code == 421:
                self.transport.loseConnection()
            return
        waiter = self._waiters.popleft()
        self._arm()
        waiter.d.callback(reply)

    def lineLengthExceeded(self, line):
        self.abort("relay sent an over-long reply line during {step}")

    def _expect(self, step: str, timeout: float | None = None) -> Deferred:
        d = Deferred()
        if not self.connected_:
            d.callback(Reply(None, ((self._lost_text or "connection lost during {step}").format(step=step),)))
            return d
        self._waiters.append(_Waiter(step, timeout or self.reply_timeout, d))
        if len(self._waiters) == 1:
            self._arm()
        return d

    def _arm(self):
        # One timer, for the reply at the head of the queue: with pipelining
        # each reply gets its full timeout counted from the previous one.
        self._cancel_timer()
        if self._waiters:
            w = self._waiters[0]
            self._timer = self.reactor.callLater(w.timeout, self._timed_out, w)

    def _cancel_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self, w: _Waiter):
        self._timer = None
        self.log.warn("{host}: no reply to {step} within {timeout}s", host=self.host,
                      step=w.step, timeout=w.timeout)
        self.abort(f"timed out after {w.timeout:g}s waiting for the reply to {w.step}")

    def _commands(self, *commands: tuple[bytes, str]) -> list[Deferred]:
        """Send commands in one write (pipelined when more than one)."""
        ds = [self._expect(step) for _, step in commands]
        if self.connected_:
            self.transport.write(b"".join(c + b"\r\n" for c, _ in commands))
        return ds

    async def _command(self, command: bytes, step: str) -> Reply:
        return await self._commands((command, step))[0]

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
            self.transport.startTLS(tls_options)
            await self._ehlo(helo_name)  # RFC 3207: forget what we knew before TLS
        if username is not None:
            await self._auth(username, password or b"")

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
        self.extensions = {}
        for line in reply.lines[1:]:
            keyword, _, params = line.strip().partition(" ")
            keyword, eq, legacy = keyword.partition("=")  # old "AUTH=LOGIN" form
            self.extensions[keyword.upper()] = (legacy + " " + params).strip() if eq else params

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
    async def send(self, message) -> DeliveryResult:
        """
        One transaction: MAIL, RCPT, DATA (pipelined when offered), the data,
        and RSET if it stopped part way.  Never raises.
        """
        data = prepare_data(message.data)
        params = b""
        if "SIZE" in self.extensions:
            params += b" SIZE=%d" % len(data)
        if "8BITMIME" in self.extensions and not message.data.isascii():
            params += b" BODY=8BITMIME"
        steps = [
            (b"MAIL FROM:<%s>%s" % (message.sender.encode(), params), "MAIL FROM", (250,)),
            (b"RCPT TO:<%s>" % message.recipient.encode(), "RCPT TO", (250, 251)),
            (b"DATA", "DATA", (354,)),
        ]
        replies = []
        if "PIPELINING" in self.extensions:
            for d in self._commands(*[(c, s) for c, s, _ in steps]):
                replies.append(await d)
        else:
            for command, step, ok in steps:
                replies.append(await self._command(command, step))
                if replies[-1].code not in ok:
                    break
        for (_, step, ok), reply in zip(steps, replies):
            if reply.code not in ok:
                break
        else:
            self.transport.write(data)
            return self._final(await self._expect("DATA (end of message)", self.data_timeout))
        result = self._failed(step, reply)
        if replies[-1].code == 354:
            # A pipelined DATA was accepted though MAIL or RCPT was not: end it
            # with an empty message (RFC 2920 3.1); the relay refuses that.
            self.transport.write(b".\r\n")
            await self._expect("DATA (end of empty message)")
        if not self.broken and self.connected_:
            reset = await self._command(b"RSET", "RSET")
            if reset.code != 250:
                self.broken = True
        return result

    def _final(self, reply: Reply) -> DeliveryResult:
        if reply.code is None:
            self.broken = True
            return retry(reply.text)
        if reply.code == 421:
            self.broken = True
        return DeliveryResult(classify(reply.code, reply.text), reply.code, reply.text)

    def _failed(self, step: str, reply: Reply) -> DeliveryResult:
        if reply.code is None:
            self.broken = True
            return retry(reply.text)
        outcome = classify(reply.code, reply.text)
        if reply.code == 421 or outcome is Outcome.SENT or not 400 <= reply.code < 600:
            # 421 closes the session; a 2xx/3xx here means we lost track.
            self.broken = True
            outcome = Outcome.RETRY
        return DeliveryResult(outcome, reply.code, f"{step}: {reply}")

    async def quit(self):
        """Say QUIT, then close; bounded by the reply timeout."""
        if self.connected_:
            await self._command(b"QUIT", "QUIT")
        if self.connected_:
            self.transport.loseConnection()
            closed = self.when_closed()
            # A TLS close can wait for the peer; do not let it hang close().
            timer = self.reactor.callLater(self.reply_timeout, self.abort, "closing")
            await closed
            if timer.active():
                timer.cancel()
