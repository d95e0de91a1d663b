"""
Tests for the inbound SMTP server (emaild.inbound.server), against the real
server listening on 127.0.0.1 with real clients: smtplib, raw sockets (for
pipelining and injection), swaks and Postfix's smtp-source from .tools/ (see
scripts/tools.sh; those tests skip when the tools are missing).  The idle
timeout is tested with a Clock.

The traps of twisted.mail's ESMTP server that this server avoids, trap by trap:
  - failed store answered 550     -> test_deliver_failure_is_451_not_550 (+ _async)
  - STARTTLS plaintext injection  -> test_starttls_discards_pipelined_plaintext,
                                     test_starttls_resets_the_session
  - long DATA line -> command mode -> test_long_data_line_answers_and_closes
  - SIZE not advertised/enforced  -> test_ehlo_advertises_..., test_mail_size_over_limit,
                                     test_data_over_limit_is_read_to_the_dot_and_refused
  - timeout never read, no NOOP   -> test_idle_timeout_*, test_simple_commands
  - LimitConnectionsByPeer broken -> test_max_sessions_refuses_the_next_connection
  - AUTH advertised before TLS    -> test_ehlo_advertises_..., test_starttls_with_smtplib
  - (SMTPFactory/ESMTPFactory wiring: not applicable, the server is its own
     protocol and does not use twisted.mail.smtp)

The Internet's abuse, over real sockets: FloodTests (one client address
holding its slots with trickled bytes while another is served; a trickled
DATA cut off), test_swaks_repeated_recipients_are_one, TLSVersionTests
(TLS 1.1 refused).  Every command with every bad byte, the deadlines and the
per-client caps are unit-tested in test_inbound_server_unit.py.
"""

from __future__ import annotations

import os
import select
import smtplib
import socket
import ssl
import stat
import string
import time
import warnings
from pathlib import Path

from twisted.internet import defer, reactor, task, threads, utils
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from emaild.config import ConfigError, load_config
from emaild.inbound.server import (
    COMMAND_LINE_LIMIT,
    DATA_LINE_LIMIT,
    Envelope,
    IInboundHandler,
    InboundFactory,
    Refused,
    ensure_self_signed,
    inbound_listener,
    tls_context_factory,
    use_self_signed,
)

REPO = Path(__file__).resolve().parents[2]
SWAKS = REPO / ".tools" / "swaks" / "usr" / "bin" / "swaks"
POSTFIX = REPO / ".tools" / "postfix"
SMTP_SOURCE = POSTFIX / "usr" / "sbin" / "smtp-source"

_tls_pair = None


def tls_pair(tmp: str) -> tuple[Path, Path]:
    """One self-signed pair for the whole run (RSA key generation is slow)."""
    global _tls_pair
    if _tls_pair is None:
        _tls_pair = ensure_self_signed(Path(tmp).absolute(), "mx.test")
    return _tls_pair


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


@implementer(IInboundHandler)
class MemoryHandler:
    """
    Accepts every recipient (returning C{("rcpt", address)}) unless told
    otherwise, keeps delivered messages in memory, and can be slowed or made
    to fail.
    """

    def __init__(self):
        #: address -> Refused or other exception to raise for it
        self.refuse: dict[str, Exception] = {}
        #: address -> seconds the check takes
        self.rcpt_delay: dict[str, float] = {}
        self.deliver_error: Exception | None = None
        self.deliver_delay = 0.0
        self.checks: list[tuple[str, str]] = []
        self.messages: list[tuple[Envelope, bytes]] = []
        self.pending = 0
        self.max_pending = 0

    def check_recipient(self, address, mail_from):
        self.checks.append((address, mail_from))
        error = self.refuse.get(address)
        delay = self.rcpt_delay.get(address, 0)

        def decide():
            self.pending -= 1
            if error is not None:
                raise error
            return ("rcpt", address)

        self.pending += 1
        self.max_pending = max(self.max_pending, self.pending)
        if delay:
            return task.deferLater(reactor, delay, decide)
        return decide()

    def deliver(self, envelope, raw):
        def store():
            if self.deliver_error is not None:
                raise self.deliver_error
            self.messages.append((envelope, raw))
            return f"M{len(self.messages)}"

        if self.deliver_delay:
            return task.deferLater(reactor, self.deliver_delay, store)
        return defer.maybeDeferred(store)


class Raw:
    """A blocking SMTP client on a plain socket, for use in a thread."""

    #: every client not yet closed (tests' cleanup closes them)
    open: list[Raw] = []

    def __init__(self, port: int, timeout: float = 5.0, source: str | None = None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""
        Raw.open.append(self)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unread: {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> tuple[int, str]:
        """One reply: (code, text of all its lines joined by newlines)."""
        lines = []
        while True:
            line = self.line()
            lines.append(line[4:].decode())
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    def replies(self, n: int) -> list[tuple[int, str]]:
        return [self.reply() for _ in range(n)]

    def closed(self) -> bool:
        """True when the server hung up (with nothing more to read)."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def starttls(self) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        assert not self.buf, self.buf
        self.sock = context.wrap_socket(self.sock)

    @classmethod
    def close_all(cls) -> None:
        while cls.open:
            cls.open.pop().sock.close()


class ServerTestCase(TestCase):
    def start(self, handler=None, **kw) -> tuple[int, InboundFactory, MemoryHandler]:
        handler = handler or MemoryHandler()
        kw.setdefault("hostname", "mx.test")
        kw.setdefault("reactor", reactor)
        factory = InboundFactory(handler, **kw)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")

        async def stop():
            Raw.close_all()
            await port.stopListening()
            for session in list(factory.sessions):
                session.transport.abortConnection()
            for _ in range(200):
                if not factory.sessions:
                    break
                await sleep(0.01)

        self.addCleanup(lambda: defer.ensureDeferred(stop()))
        return port.getHost().port, factory, handler

    def in_thread(self, fn, *args):
        return threads.deferToThread(fn, *args)

    def tls(self) -> object:
        cert, key = tls_pair(self.mktemp())
        return tls_context_factory(cert, key)

    def capture_log(self) -> list[str]:
        seen: list[str] = []

        def observe(event):
            seen.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        return seen


MESSAGE = (b"From: Alice <alice@example.org>\r\n"
           b"To: group@relay.test\r\n"
           b"Subject: hello\r\n"
           b"\r\n"
           b"first line\r\n"
           b".a line that starts with a dot\r\n"
           b"..two dots\r\n"
           b"8-bit: caf\xc3\xa9\r\n"
           b"trailing spaces   \r\n"
           b"\r\n"
           b"last\r\n")


class DeliveryTests(ServerTestCase):
    def test_handler_interface(self):
        verifyObject(IInboundHandler, MemoryHandler())

    async def test_smtplib_delivers_the_message_exactly(self):
        port, factory, handler = self.start()
        log = self.capture_log()

        def send():
            with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=5) as s:
                s.ehlo()
                s.mail("alice@example.org")
                s.rcpt("a@relay.test")
                s.rcpt("b@relay.test")
                return s.data(MESSAGE)

        code, text = await self.in_thread(send)
        self.assertEqual((code, text), (250, b"2.0.0 Ok: queued as M1"))
        [(envelope, raw)] = handler.messages
        self.assertEqual(envelope.peer, "127.0.0.1")
        self.assertEqual(envelope.helo, "client.test")
        self.assertEqual(envelope.mail_from, "alice@example.org")
        self.assertEqual(envelope.recipients, (("rcpt", "a@relay.test"), ("rcpt", "b@relay.test")))
        self.assertFalse(envelope.tls)
        self.assertEqual(envelope.size, len(MESSAGE))
        header, rest = raw.split(b"\r\n", 3)[:3], raw.split(b"\r\n", 3)[3]
        self.assertEqual(rest, MESSAGE)  # exactly as sent, dots unstuffed, CRLF kept
        self.assertEqual(header[0], b"Received: from client.test ([127.0.0.1])")
        self.assertEqual(header[1], b"\tby mx.test (emaild) with ESMTP;")
        self.assertRegex(header[2].decode(), r"^\t\w{3}, \d{2} \w{3} \d{4} [\d:]{8} \+0000$")
        lines = [l for l in log if l.startswith("inbound: peer=")]
        self.assertEqual(lines, [f"inbound: peer=127.0.0.1 from=<alice@example.org> rcpts=2 "
                                 f"size={len(MESSAGE)} result=250 queued as M1"])
        self.assertNotIn("hello", lines[0])

    async def test_message_line_is_formatted_once_and_keeps_its_fields(self):
        # the observer formats one field (each costs it a lookup and a
        # format call, once per message); the fields stay in the event
        port, factory, handler = self.start()
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                return s.sendmail("{x}@example.org", ["a@relay.test"], MESSAGE)

        await self.in_thread(send)
        [event] = [e for e in events if formatEvent(e).startswith("inbound: peer=")]
        self.assertEqual(formatEvent(event), f"inbound: peer=127.0.0.1 from=<{{x}}@example.org> "
                                             f"rcpts=1 size={len(MESSAGE)} result=250 queued as M1")
        fields = [name for _, name, _, _ in string.Formatter().parse(event["log_format"]) if name]
        self.assertEqual(len(fields), 1)
        self.assertEqual({k: event[k] for k in ("peer", "mail_from", "n", "size", "code", "result")},
                         {"peer": "127.0.0.1", "mail_from": "{x}@example.org", "n": 1,
                          "size": len(MESSAGE), "code": 250, "result": "queued as M1"})

    async def test_null_sender_and_several_transactions_per_session(self):
        port, factory, handler = self.start()

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.sendmail("", ["a@relay.test"], b"Subject: bounce\r\n\r\nx\r\n")
                s.sendmail("b@example.org", ["c@relay.test"], b"Subject: two\r\n\r\ny\r\n")

        await self.in_thread(send)
        self.assertEqual([e.mail_from for e, _ in handler.messages], ["", "b@example.org"])
        self.assertEqual(handler.checks, [("a@relay.test", ""), ("c@relay.test", "b@example.org")])

    async def test_refused_recipient_gets_the_handlers_reply(self):
        port, factory, handler = self.start()
        handler.refuse["nobody@relay.test"] = Refused(550, "5.1.1", "no such address here")
        handler.refuse["spam@relay.test"] = Refused(550, "5.7.1", "not from you")

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.ehlo("c")
                s.mail("a@example.org")
                answers = [s.rcpt(r) for r in
                           ("nobody@relay.test", "ok@relay.test", "spam@relay.test")]
                answers.append(s.data(b"Subject: x\r\n\r\nx\r\n"))
                return answers

        answers = await self.in_thread(send)
        self.assertEqual(answers, [(550, b"5.1.1 no such address here"), (250, b"2.1.5 Ok"),
                                   (550, b"5.7.1 not from you"),
                                   (250, b"2.0.0 Ok: queued as M1")])
        self.assertEqual(handler.messages[0][0].recipients, (("rcpt", "ok@relay.test"),))

    async def test_recipient_check_error_is_451_without_a_traceback(self):
        port, factory, handler = self.start()
        handler.refuse["a@relay.test"] = RuntimeError("database is down: secret detail")

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.ehlo("c")
                s.mail("a@example.org")
                return s.rcpt("a@relay.test"), s.noop()

        rcpt, noop = await self.in_thread(send)
        self.assertEqual(rcpt, (451, b"4.3.0 Temporary local problem, try again later"))
        self.assertEqual(noop[0], 250)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_deliver_failure_is_451_not_550(self):
        port, factory, handler = self.start()
        handler.deliver_error = RuntimeError("disk full: secret detail")

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.ehlo("c")
                s.mail("a@example.org")
                s.rcpt("a@relay.test")
                first = s.data(b"Subject: x\r\n\r\nx\r\n")
                # the session goes on: a new transaction is possible
                handler.deliver_error = None
                s.mail("a@example.org")
                s.rcpt("a@relay.test")
                return first, s.data(b"Subject: y\r\n\r\ny\r\n")

        first, second = await self.in_thread(send)
        self.assertEqual(first, (451, b"4.3.0 Temporary local problem, try again later"))
        self.assertEqual(second[0], 250)
        self.assertEqual(len(handler.messages), 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    async def test_deliver_failure_is_451_not_550_async(self):
        port, factory, handler = self.start()
        handler.deliver_error = OSError("connection to database lost")
        handler.deliver_delay = 0.05

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.ehlo("c")
                s.mail("a@example.org")
                s.rcpt("a@relay.test")
                return s.data(b"Subject: x\r\n\r\nx\r\n")

        self.assertEqual((await self.in_thread(send))[0], 451)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    async def test_deliver_refused_gets_its_reply(self):
        port, factory, handler = self.start()
        handler.deliver_error = Refused(554, "5.7.1", "looks like a loop")

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.ehlo("c")
                s.mail("a@example.org")
                s.rcpt("a@relay.test")
                return s.data(b"Subject: x\r\n\r\nx\r\n")

        self.assertEqual(await self.in_thread(send), (554, b"5.7.1 looks like a loop"))
        self.assertEqual(self.flushLoggedErrors(), [])

    async def test_bare_lf_never_ends_data(self):
        # SMTP smuggling: only CRLF.CRLF ends the message
        port, factory, handler = self.start()
        body = (b"Subject: x\r\n\r\none\n.\nMAIL FROM:<evil@x>\n"
                b"two\n.\r\nRCPT TO:<evil@relay.test>\r\nthree\r\n")

        def talk():
            c = Raw(port)
            c.reply()
            c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<a@relay.test>\r\nDATA\r\n")
            c.replies(4)
            c.send(body + b".\r\nQUIT\r\n")
            return c.replies(2)

        replies = await self.in_thread(talk)
        self.assertEqual([r[0] for r in replies], [250, 221])
        [(envelope, raw)] = handler.messages
        self.assertTrue(raw.endswith(b"\r\n" + body))
        self.assertEqual(handler.checks, [("a@relay.test", "a@example.org")])


class PipeliningTests(ServerTestCase):
    async def test_pipelined_commands_wait_for_slow_checks(self):
        port, factory, handler = self.start()
        # the first check is the slowest: answers must still come in order
        handler.rcpt_delay = {"a@relay.test": 0.15, "b@relay.test": 0.05}
        handler.refuse["b@relay.test"] = Refused(550, "5.1.1", "no such address here")
        handler.deliver_delay = 0.05

        def talk():
            c = Raw(port)
            c.reply()
            c.send(b"EHLO c\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<a@relay.test>\r\n"
                   b"RCPT TO:<b@relay.test>\r\nRCPT TO:<c@relay.test>\r\nNOOP\r\nDATA\r\n")
            replies = c.replies(7)
            c.send(b"Subject: x\r\n\r\nbody\r\n.\r\nRSET\r\nRCPT TO:<d@relay.test>\r\nQUIT\r\n")
            replies += c.replies(4)
            return replies, c.closed()

        replies, closed = await self.in_thread(talk)
        self.assertEqual([code for code, _ in replies],
                         [250, 250, 250, 550, 250, 250, 354, 250, 250, 503, 221])
        self.assertEqual(replies[3][1], "5.1.1 no such address here")
        self.assertTrue(closed)
        self.assertEqual(handler.max_pending, 1)
        self.assertEqual([a for a, _ in handler.checks],
                         ["a@relay.test", "b@relay.test", "c@relay.test"])
        [(envelope, raw)] = handler.messages
        self.assertEqual(envelope.recipients, (("rcpt", "a@relay.test"), ("rcpt", "c@relay.test")))

    async def test_swaks_pipelining(self):
        if not SWAKS.exists():
            raise self.skipTest("swaks missing: run scripts/tools.sh")
        port, factory, handler = self.start()
        handler.rcpt_delay = {"a@relay.test": 0.05}
        out, err, code = await utils.getProcessOutputAndValue(str(SWAKS), [
            "--server", f"127.0.0.1:{port}", "--pipeline", "--helo", "swaks.test",
            "--from", "s@example.org", "--to", "a@relay.test,b@relay.test",
            "--header", "Subject: via swaks", "--body", "hello from swaks"], env=os.environ)
        self.assertEqual(code, 0, out + err)
        self.assertIn(b"PIPELINING", out)
        [(envelope, raw)] = handler.messages
        self.assertEqual(len(envelope.recipients), 2)
        self.assertIn(b"Subject: via swaks\r\n", raw)

    async def test_swaks_repeated_recipients_are_one(self):
        if not SWAKS.exists():
            raise self.skipTest("swaks missing: run scripts/tools.sh")
        port, factory, handler = self.start()
        out, err, code = await utils.getProcessOutputAndValue(str(SWAKS), [
            "--server", f"127.0.0.1:{port}", "--pipeline", "--from", "s@example.org",
            "--to", ",".join(["a@relay.test", "A@Relay.Test", "b@relay.test"] * 20)],
            env=os.environ)
        self.assertEqual(code, 0, out + err)
        [(envelope, raw)] = handler.messages
        self.assertEqual(envelope.recipients, (("rcpt", "a@relay.test"), ("rcpt", "b@relay.test")))
        self.assertEqual(out.count(b"2.1.5 Ok (already a recipient)"), 58)

    async def test_swaks_quit_after_rcpt_stores_nothing(self):
        if not SWAKS.exists():
            raise self.skipTest("swaks missing: run scripts/tools.sh")
        port, factory, handler = self.start()
        out, err, code = await utils.getProcessOutputAndValue(str(SWAKS), [
            "--server", f"127.0.0.1:{port}", "--quit-after", "RCPT",
            "--from", "s@example.org", "--to", "a@relay.test"], env=os.environ)
        self.assertEqual(code, 0, out + err)
        self.assertEqual(handler.checks, [("a@relay.test", "s@example.org")])
        self.assertEqual(handler.messages, [])

    async def test_smtp_source_many_sessions(self):
        if not SMTP_SOURCE.exists():
            raise self.skipTest("smtp-source missing: run scripts/tools.sh")
        port, factory, handler = self.start(max_sessions=40)
        env = {**os.environ, "LD_LIBRARY_PATH": str(POSTFIX / "usr" / "lib" / "postfix")}
        out, err, code = await utils.getProcessOutputAndValue(str(SMTP_SOURCE), [
            "-s", "5", "-m", "50", "-f", "s@example.org", "-t", "a@relay.test",
            "-M", "source.test", f"127.0.0.1:{port}"], env=env)
        self.assertEqual(code, 0, out + err)
        self.assertEqual(len(handler.messages), 50)
        self.assertEqual(len({raw for _, raw in handler.messages}), 50)  # one Received each


class CommandTests(ServerTestCase):
    async def test_ehlo_advertises_extensions_but_never_auth(self):
        port, factory, handler = self.start(max_message_size=12345)

        def ehlo():
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                return s.ehlo("c"), dict(s.esmtp_features)

        (code, text), features = await self.in_thread(ehlo)
        self.assertEqual(code, 250)
        self.assertEqual(text.split(b"\n")[0], b"mx.test")
        self.assertEqual(features, {"pipelining": "", "size": "12345", "8bitmime": "",
                                    "enhancedstatuscodes": ""})

    async def test_simple_commands(self):
        port, factory, handler = self.start()
        script = [
            (b"MAIL FROM:<a@example.org>", 503, "5.5.1"),  # no HELO yet
            (b"RCPT TO:<a@relay.test>", 503, "5.5.1"),  # RCPT before MAIL
            (b"HELO", 501, "5.5.4"),
            (b"EHLO", 501, "5.5.4"),
            (b"HELO c", 250, "mx.test"),
            (b"DATA", 503, "5.5.1"),  # no MAIL
            (b"NOOP", 250, "2.0.0"),
            (b"VRFY someone", 252, "2.5.0"),
            (b"EXPN list", 502, "5.5.1"),
            (b"HELP", 214, "2.0.0"),
            (b"FROB", 500, "5.5.2"),
            (b"", 500, "5.5.2"),
            (b"MAIL TO:<a@example.org>", 501, "5.5.4"),
            (b"MAIL FROM:<a@example.org", 501, "5.1.7"),
            (b"MAIL FROM:<no at sign>", 501, "5.1.7"),
            (b"MAIL FROM:<a@example.org> RET=HDRS", 555, "5.5.4"),
            (b"MAIL FROM:<a@example.org> BODY=8BITMIME", 250, "2.1.0"),
            (b"MAIL FROM:<b@example.org>", 503, "5.5.1"),  # nested
            (b"DATA", 554, "5.5.1"),  # no recipients
            (b"RCPT TO:<a@relay.test> NOTIFY=NEVER", 555, "5.5.4"),
            (b"RCPT TO:<>", 501, "5.1.3"),
            (b"RCPT TO:<Postmaster>", 250, "2.1.5"),
            (b"RSET", 250, "2.0.0"),
            (b"RCPT TO:<a@relay.test>", 503, "5.5.1"),  # RSET cleared MAIL
            (b"MAIL FROM:<@route.example:a@example.org>", 250, "2.1.0"),
            (b"STARTTLS", 454, "4.7.0"),  # no TLS configured
            (b"QUIT", 221, "2.0.0"),
        ]

        def talk():
            c = Raw(port)
            banner = c.reply()
            got = []
            for line, _, _ in script:
                c.send(line + b"\r\n")
                got.append(c.reply())
            return banner, got, c.closed()

        banner, got, closed = await self.in_thread(talk)
        self.assertEqual(banner, (220, "mx.test ESMTP"))
        for (line, code, start), (got_code, text) in zip(script, got):
            self.assertEqual((line, got_code), (line, code), text)
            self.assertTrue(text.startswith(start), (line, text))
        self.assertTrue(closed)
        self.assertEqual(handler.checks, [("Postmaster", "a@example.org")])

    async def test_bare_lf_commands_are_accepted(self):
        port, factory, handler = self.start()

        def talk():
            c = Raw(port)
            c.reply()
            c.send(b"HELO c\nNOOP\nQUIT\n")
            return c.replies(3)

        self.assertEqual([r[0] for r in await self.in_thread(talk)], [250, 250, 221])

    async def test_too_many_recipients(self):
        port, factory, handler = self.start(max_recipients=2)

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.ehlo("c")
                s.mail("a@example.org")
                return [s.rcpt(f"r{i}@relay.test") for i in range(3)]

        answers = await self.in_thread(send)
        self.assertEqual(answers[2], (452, b"4.5.3 Error: too many recipients"))
        self.assertEqual(len(handler.checks), 2)

    async def test_ehlo_with_a_control_byte_is_refused_at_ehlo(self):
        # It used to be answered 250, and every message of the session then
        # failed to store (451 for days): refused at EHLO, saying why.
        port, factory, handler = self.start()

        def talk():
            c = Raw(port)
            c.reply()
            c.send(b"EHLO evil\xff\x01(x)\tname\r\nMAIL FROM:<a@example.org>\r\n"
                   b"EHLO evil(x)name\r\nMAIL FROM:<a@example.org>\r\n"
                   b"RCPT TO:<a@relay.test>\r\nDATA\r\n")
            replies = c.replies(6)
            c.send(b"x\r\n.\r\n")
            return replies + [c.reply()]

        replies = await self.in_thread(talk)
        self.assertEqual(replies[0],
                         (501, "5.5.2 EHLO command contains a control character (0x01); refused"))
        self.assertEqual([code for code, _ in replies], [501, 503, 250, 250, 250, 354, 250])
        raw = handler.messages[0][1]
        first = raw.split(b"\r\n")[0]
        self.assertTrue(first.startswith(b"Received: from evil(x)name ([127.0.0.1])"), first)


class SizeAndLineTests(ServerTestCase):
    async def test_mail_size_over_limit(self):
        port, factory, handler = self.start(max_message_size=1000)

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.ehlo("c")
                over = s.mail("a@example.org", ["SIZE=1001"])
                at = s.mail("a@example.org", ["SIZE=1000"])
                return over, at

        over, at = await self.in_thread(send)
        self.assertEqual(over, (552, b"5.3.4 Message size exceeds fixed limit"))
        self.assertEqual(at[0], 250)

    async def test_data_over_limit_is_read_to_the_dot_and_refused(self):
        port, factory, handler = self.start(max_message_size=1000)
        # 1000 octets exactly is accepted, one more is not
        exact = b"Subject: x\r\n\r\n" + b"a" * (1000 - 14 - 2) + b"\r\n"
        self.assertEqual(len(exact), 1000)
        over = exact + b"b\r\n"
        # lines that look like commands must not be read as commands
        over = over + b"RCPT TO:<evil@relay.test>\r\nQUIT\r\n"

        def talk():
            c = Raw(port)
            c.reply()
            out = []
            for body in (exact, over):
                c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<a@relay.test>\r\n"
                       b"DATA\r\n")
                c.replies(4)
                c.send(body + b".\r\n")
                out.append(c.reply())
            c.send(b"NOOP\r\n")
            out.append(c.reply())
            return out

        exact_reply, over_reply, noop = await self.in_thread(talk)
        self.assertEqual(exact_reply[0], 250)
        self.assertEqual(over_reply, (552, "5.3.4 Message size exceeds fixed limit"))
        self.assertEqual(noop[0], 250)
        self.assertEqual(len(handler.messages), 1)
        self.assertEqual(handler.messages[0][0].size, 1000)
        self.assertNotIn("evil@relay.test", [a for a, _ in handler.checks])

    async def test_long_command_line_answers_and_closes(self):
        port, factory, handler = self.start()

        def talk(n):
            c = Raw(port)
            c.reply()
            c.send(b"NOOP " + b"x" * (n - 7) + b"\r\nNOOP\r\n")
            reply = c.reply()
            return reply, reply[0] != 250 and c.closed()

        ok, _ = await self.in_thread(talk, COMMAND_LINE_LIMIT)
        self.assertEqual(ok[0], 250)
        reply, closed = await self.in_thread(talk, COMMAND_LINE_LIMIT + 1)
        self.assertEqual(reply, (500, "5.5.6 Line too long"))
        self.assertTrue(closed)

    async def test_long_command_line_without_end_closes(self):
        port, factory, handler = self.start()

        def talk():
            c = Raw(port)
            c.reply()
            c.send(b"x" * 5000)
            return c.reply(), c.closed()

        reply, closed = await self.in_thread(talk)
        self.assertEqual(reply, (500, "5.5.6 Line too long"))
        self.assertTrue(closed)

    async def test_long_data_line_answers_and_closes(self):
        port, factory, handler = self.start()

        def talk(length):
            c = Raw(port)
            c.reply()
            c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<a@relay.test>\r\nDATA\r\n")
            c.replies(4)
            c.send(b"Subject: x\r\n\r\n" + b"y" * (length - 2) + b"\r\n"
                   b"RCPT TO:<evil@relay.test>\r\n.\r\n")
            reply = c.reply()
            return reply, reply[0] != 250 and c.closed()

        ok, _ = await self.in_thread(talk, DATA_LINE_LIMIT)
        self.assertEqual(ok[0], 250)
        reply, closed = await self.in_thread(talk, DATA_LINE_LIMIT + 1)
        self.assertEqual(reply, (500, "5.5.6 Line too long"))
        self.assertTrue(closed)
        # never fell back to command mode: the "RCPT" in the body was not run
        self.assertEqual(len(handler.messages), 1)
        self.assertNotIn("evil@relay.test", [a for a, _ in handler.checks])


class TLSTests(ServerTestCase):
    async def test_starttls_discards_pipelined_plaintext(self):
        port, factory, handler = self.start(tls_context=self.tls())

        def talk():
            c = Raw(port)
            c.reply()
            c.send(b"EHLO c\r\n")
            c.reply()
            # one packet: what follows STARTTLS was sent in clear
            c.send(b"STARTTLS\r\nEHLO evil\r\nMAIL FROM:<evil@example.org>\r\n"
                   b"RCPT TO:<evil@relay.test>\r\n")
            starttls = c.reply()
            c.starttls()
            c.send(b"NOOP\r\n")
            first = c.reply()  # must answer our NOOP, not an injected command
            c.send(b"EHLO c\r\n")
            ehlo = c.reply()
            c.send(b"QUIT\r\n")
            c.reply()
            return starttls, first, ehlo

        starttls, first, ehlo = await self.in_thread(talk)
        self.assertEqual(starttls, (220, "2.0.0 Ready to start TLS"))
        self.assertEqual(first, (250, "2.0.0 Ok"))
        self.assertNotIn("STARTTLS", ehlo[1])
        self.assertEqual(handler.checks, [])

    async def test_starttls_resets_the_session(self):
        port, factory, handler = self.start(tls_context=self.tls())

        def talk():
            c = Raw(port)
            c.reply()
            c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")
            c.replies(2)
            c.send(b"STARTTLS\r\n")
            c.reply()
            c.starttls()
            out = []
            for line in (b"RCPT TO:<a@relay.test>", b"MAIL FROM:<a@example.org>",
                         b"EHLO c", b"STARTTLS", b"RCPT TO:<a@relay.test>"):
                c.send(line + b"\r\n")
                out.append(c.reply())
            return out

        rcpt, mail, ehlo, again, rcpt2 = await self.in_thread(talk)
        self.assertEqual(rcpt[0], 503)  # MAIL forgotten
        self.assertEqual(mail[0], 503)  # HELO forgotten
        self.assertEqual(ehlo[0], 250)
        self.assertEqual(again, (503, "5.5.1 Error: TLS already active"))
        self.assertEqual(rcpt2[0], 503)

    async def test_starttls_with_smtplib(self):
        port, factory, handler = self.start(tls_context=self.tls())

        def send():
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.ehlo("c")
                before = dict(s.esmtp_features)
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
                s.starttls(context=context)
                s.ehlo("c")
                after = dict(s.esmtp_features)
                s.sendmail("a@example.org", ["a@relay.test"], b"Subject: tls\r\n\r\nx\r\n")
                return before, after

        before, after = await self.in_thread(send)
        self.assertIn("starttls", before)
        self.assertNotIn("starttls", after)
        self.assertNotIn("auth", before)
        self.assertNotIn("auth", after)
        [(envelope, raw)] = handler.messages
        self.assertTrue(envelope.tls)
        self.assertIn(b"with ESMTPS;", raw.split(b"\r\n", 2)[1])

    async def test_swaks_tls(self):
        if not SWAKS.exists():
            raise self.skipTest("swaks missing: run scripts/tools.sh")
        port, factory, handler = self.start(tls_context=self.tls())
        out, err, code = await utils.getProcessOutputAndValue(str(SWAKS), [
            "--server", f"127.0.0.1:{port}", "--tls", "--pipeline",
            "--from", "s@example.org", "--to", "a@relay.test"], env=os.environ)
        self.assertEqual(code, 0, out + err)
        self.assertTrue(handler.messages[0][0].tls)


class SessionLimitTests(ServerTestCase):
    async def test_max_sessions_refuses_the_next_connection(self):
        port, factory, handler = self.start(max_sessions=2)

        def talk():
            a, b = Raw(port), Raw(port)
            first = [a.reply(), b.reply()]
            c = Raw(port)
            third = c.reply()
            third_closed = c.closed()
            a.send(b"QUIT\r\n")
            a.reply()
            assert a.closed()
            return first, third, third_closed

        first, third, third_closed = await self.in_thread(talk)
        self.assertEqual([r[0] for r in first], [220, 220])
        self.assertEqual(third, (421, "4.7.0 Too many connections, try again later"))
        self.assertTrue(third_closed)
        for _ in range(100):
            if len(factory.sessions) < 2:
                break
            await sleep(0.01)

        def again():
            d = Raw(port)
            return d.reply()

        self.assertEqual((await self.in_thread(again))[0], 220)

    async def test_max_errors_closes(self):
        port, factory, handler = self.start(max_errors=3)
        handler.refuse = {f"r{i}@relay.test": Refused(550, "5.1.1", "no") for i in range(5)}

        def talk():
            c = Raw(port)
            c.reply()
            c.send(b"EHLO c\r\nFROB\r\nMAIL FROM:<a@example.org>\r\n"
                   + b"".join(b"RCPT TO:<r%d@relay.test>\r\n" % i for i in range(5)))
            return c.replies(7), c.closed()

        replies, closed = await self.in_thread(talk)
        self.assertEqual([r[0] for r in replies], [250, 500, 250, 550, 550, 550, 421])
        self.assertEqual(replies[-1][1], "4.7.0 mx.test Error: too many errors")
        self.assertTrue(closed)
        self.assertEqual(len(handler.checks), 3)

    async def test_max_commands_closes(self):
        port, factory, handler = self.start(max_commands=5)

        def talk():
            c = Raw(port)
            c.reply()
            c.send(b"EHLO c\r\n" + b"NOOP\r\n" * 10)
            return c.replies(6), c.closed()

        replies, closed = await self.in_thread(talk)
        self.assertEqual([r[0] for r in replies], [250, 250, 250, 250, 250, 421])
        self.assertEqual(replies[-1][1], "4.7.0 mx.test Error: too many commands")
        self.assertTrue(closed)

    async def test_message_lines_are_not_commands(self):
        port, factory, handler = self.start(max_commands=5)

        def talk():
            c = Raw(port)
            c.reply()
            c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<a@relay.test>\r\nDATA\r\n"
                   + b"line\r\n" * 50 + b".\r\nQUIT\r\n")
            return c.replies(6)

        self.assertEqual([r[0] for r in await self.in_thread(talk)],
                         [250, 250, 250, 354, 250, 221])


class IdleTimeoutTests(TestCase):
    def connect(self, **kw):
        clock = Clock()
        handler = MemoryHandler()
        factory = InboundFactory(handler, hostname="mx.test", reactor=clock, **kw)
        address = IPv4Address("TCP", "192.0.2.1", 4321)
        protocol = factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return clock, factory, protocol, transport

    def test_idle_timeout_says_421_and_closes(self):
        clock, factory, protocol, transport = self.connect(idle_timeout=60)
        self.assertEqual(transport.value(), b"220 mx.test ESMTP\r\n")
        clock.advance(50)
        protocol.dataReceived(b"NOOP\r\n")  # activity restarts the clock
        clock.advance(50)
        self.assertFalse(transport.disconnecting)
        clock.advance(11)
        self.assertTrue(transport.value().endswith(
            b"250 2.0.0 Ok\r\n421 4.4.2 mx.test Error: timeout exceeded\r\n"))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(factory.sessions, set())
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_idle_timeout_while_the_handler_never_answers(self):
        clock, factory, protocol, transport = self.connect(idle_timeout=60)
        factory.handler.check_recipient = lambda address, mail_from: defer.Deferred()
        protocol.dataReceived(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@relay.test>\r\nNOOP\r\n")
        self.assertTrue(protocol.paused)  # no line is read while the handler decides
        clock.advance(61)
        self.assertTrue(transport.value().endswith(b"421 4.4.2 mx.test Error: timeout exceeded\r\n"))
        self.assertTrue(transport.disconnecting)

    def test_session_count(self):
        clock, factory, protocol, transport = self.connect(max_sessions=1)
        self.assertEqual(factory.sessions, {protocol})
        other = factory.buildProtocol(IPv4Address("TCP", "192.0.2.2", 1))
        second = StringTransport()
        other.makeConnection(second)
        self.assertEqual(second.value(), b"421 4.7.0 Too many connections, try again later\r\n")
        self.assertTrue(second.disconnecting)
        protocol.connectionLost(None)
        self.assertEqual(factory.sessions, set())


class SetupTests(TestCase):
    def test_ensure_self_signed_makes_once_and_reuses(self):
        state = Path(self.mktemp()).absolute()
        cert, key = ensure_self_signed(state, "mx.example.org")
        self.assertEqual(stat.S_IMODE(key.stat().st_mode), 0o600)
        self.assertTrue(cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----"))
        before = (cert.read_bytes(), key.read_bytes())
        self.assertEqual(ensure_self_signed(state, "mx.example.org"), (cert, key))
        self.assertEqual((cert.read_bytes(), key.read_bytes()), before)
        tls_context_factory(cert, key).getContext()  # loads and matches

    def test_tls_options_refuse_below_tls_1_2(self):
        from OpenSSL import SSL

        cert, key = tls_pair(self.mktemp())
        options = tls_context_factory(cert, key).getContext().set_options(0)
        self.assertTrue(options & SSL.OP_NO_TLSv1)
        self.assertTrue(options & SSL.OP_NO_TLSv1_1)
        self.assertFalse(options & SSL.OP_NO_TLSv1_2)
        self.assertFalse(options & SSL.OP_NO_TLSv1_3)

    def test_tls_context_factory_refuses_a_mismatched_key(self):
        from tests.tlsfiles import make_tls_files

        directory = self.mktemp()
        os.makedirs(directory)
        files = make_tls_files(directory)
        good = os.path.join(files.directory, "localhost.pem")
        other = os.path.join(files.directory, "wrong-host.pem")
        tls_context_factory(good, "")  # key and certificate in one file
        from OpenSSL import SSL

        # the key does not belong to the certificate
        self.assertRaises(SSL.Error, tls_context_factory, good, other)

    def test_config_keys(self):
        config = load_config(None, environ={}, overrides={})
        smtp = config["smtp"]
        self.assertEqual((smtp["hostname"], smtp["max_sessions"], smtp["max_message_size"],
                          smtp["max_recipients"], smtp["idle_timeout"], smtp["max_commands"],
                          smtp["max_errors"], smtp["tls_certificate"], smtp["tls_key"]),
                         ("", 40, 10485760, 100, 300.0, 1000, 20, "", ""))
        config = load_config(None, environ={"EMAILD_SMTP_MAX_MESSAGE_SIZE": "512KB"},
                             overrides={"smtp": {"idle_timeout": "2m"}})
        self.assertEqual(config["smtp"]["max_message_size"], 512 * 1024)
        self.assertEqual(config["smtp"]["idle_timeout"], 120.0)
        for bad in ("lots", "0", "-1MB", "10 TB", "2GB", 2**31):
            self.assertRaises(ConfigError, load_config, None, environ={},
                              overrides={"smtp": {"max_message_size": bad}})
        self.assertRaises(ConfigError, load_config, None, environ={},
                          overrides={"smtp": {"hostname": "not a name"}})
        self.assertEqual((smtp["max_sessions_per_client"], smtp["max_connections_per_minute"],
                          smtp["command_timeout"], smtp["data_timeout"]), (5, 60, 300.0, 600.0))
        for key, bad in (("max_sessions_per_client", 0), ("max_connections_per_minute", "x"),
                         ("command_timeout", "-1s"), ("data_timeout", "soon")):
            with self.assertRaises(ConfigError) as raised:
                load_config(None, environ={}, overrides={"smtp": {key: bad}})
            self.assertIn(f"smtp.{key}", str(raised.exception))

    def test_inbound_listener_from_config(self):
        state = Path(self.mktemp()).absolute()
        config = load_config(None, environ={}, overrides={
            "paths": {"state_dir": str(state)},
            "smtp": {"endpoint": "tcp:0:interface=127.0.0.1", "relay_domain": "relay.test",
                     "max_sessions": 3, "max_message_size": "1MB"}})
        service = inbound_listener(config, MemoryHandler(), reactor)
        factory = service.factory
        self.assertEqual((factory.hostname, factory.max_sessions, factory.max_message_size),
                         ("relay.test", 3, 2**20))
        self.assertEqual((factory.clients.per_client, factory.clients.per_minute,
                          factory.command_timeout, factory.data_timeout), (5, 60, 300.0, 600.0))
        # nothing is written before the daemon dropped privileges…
        self.assertFalse(state.exists())
        self.assertIsNone(factory.tls_context)
        # …then the self-signed pair is made in the state directory
        use_self_signed(config, service)
        self.assertTrue((state / "tls" / "smtp-key.pem").exists())
        self.assertIsNotNone(factory.tls_context)

    def test_inbound_listener_key_without_certificate(self):
        config = load_config(None, environ={}, overrides={"smtp": {"tls_key": "/x.pem"}})
        self.assertRaises(ConfigError, inbound_listener, config, MemoryHandler(), reactor)


class TLSVersionTests(ServerTestCase):
    """STARTTLS with TLS 1.2 as the minimum (smtplib and the ssl module)."""

    def starttls(self, port: int, version: ssl.TLSVersion):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with warnings.catch_warnings():  # TLSv1_1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = version
        if version < ssl.TLSVersion.TLSv1_2:
            context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client try it at all

        def talk():
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.ehlo("c")
                try:
                    s.starttls(context=context)
                except (ssl.SSLError, OSError) as e:
                    return ("refused", e)
                s.ehlo("c")
                s.sendmail("a@example.org", ["a@relay.test"], b"Subject: tls\r\n\r\nx\r\n")
                return ("ok", s.sock.version())

        return self.in_thread(talk)

    async def test_tls_1_2_and_1_3_work(self):
        port, factory, handler = self.start(tls_context=self.tls())
        for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
                              (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
            self.assertEqual(await self.starttls(port, version), ("ok", name))
        self.assertEqual([e.tls for e, _ in handler.messages], [True, True])

    async def test_tls_1_1_is_refused(self):
        from OpenSSL import SSL

        # the control: this client can do TLS 1.1 with a server that allows it
        cert, key = tls_pair(self.mktemp())

        @implementer(IOpenSSLContextFactory)
        class Lax:
            def __init__(self):
                self.context = SSL.Context(SSL.TLS_METHOD)
                self.context.set_min_proto_version(SSL.TLS1_1_VERSION)
                self.context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
                self.context.use_certificate_chain_file(str(cert))
                self.context.use_privatekey_file(str(key))

            def getContext(self):  # noqa: N802
                return self.context

        lax = Lax()
        lax_port, _, _ = self.start(tls_context=lax)
        control = await self.starttls(lax_port, ssl.TLSVersion.TLSv1_1)
        if control[0] != "ok":
            raise self.skipTest(f"this OpenSSL cannot speak TLS 1.1 at all: {control[1]}")
        port, factory, handler = self.start(tls_context=self.tls())
        result = await self.starttls(port, ssl.TLSVersion.TLSv1_1)
        self.assertEqual(result[0], "refused", result)
        self.assertEqual(handler.messages, [])


class FloodTests(ServerTestCase):
    """One client cannot hold the server: loopback addresses as clients."""

    async def test_a_flood_from_one_client_while_another_is_served(self):
        port, factory, handler = self.start(max_sessions=6, max_sessions_per_client=3,
                                            command_timeout=1.0, idle_timeout=30)

        def flood():
            held = [Raw(port, source="127.0.0.2") for _ in range(3)]
            greetings = [c.reply() for c in held]
            refused = [Raw(port, source="127.0.0.2") for _ in range(3)]
            refusals = [(c.reply(), c.closed()) for c in refused]
            # trickle a byte at a time into every held session
            cut_off = []
            for _ in range(20):  # 2 s, twice the command deadline
                for c in held:
                    try:
                        c.send(b"N")
                    except OSError:
                        pass
                time.sleep(0.1)
            for c in held:
                cut_off.append(c.reply())
            return greetings, refusals, cut_off

        def other_client():
            time.sleep(0.3)  # while the flood holds its slots
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as s:
                s.ehlo("c")
                s.mail("a@example.org")
                s.rcpt("a@relay.test")
                return s.data(b"Subject: x\r\n\r\nserved\r\n")

        started = time.monotonic()
        (greetings, refusals, cut_off), served = await defer.gatherResults(
            [self.in_thread(flood), self.in_thread(other_client)])
        self.assertEqual([code for code, _ in greetings], [220] * 3)
        self.assertEqual(refusals, [((421, "4.7.0 too many sessions from your address, try "
                                            "again later"), True)] * 3)
        self.assertEqual(served[0], 250)
        self.assertEqual(cut_off, [(421, "4.4.2 mx.test Error: command took too long")] * 3)
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(len(handler.messages), 1)

    async def test_a_byte_a_tick_trickler_is_cut_off_in_data(self):
        port, factory, handler = self.start(command_timeout=5.0, data_timeout=1.0,
                                            idle_timeout=30)

        def trickle():
            c = Raw(port)
            c.reply()
            c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<a@relay.test>\r\n"
                   b"DATA\r\n")
            c.replies(4)
            started = time.monotonic()
            sent = 0
            for _ in range(100):  # 20 bytes a second: the idle timeout never fires
                try:
                    c.send(b"x")
                    sent += 1
                except OSError:
                    break
                if select.select([c.sock], [], [], 0.05)[0]:
                    break  # the server said something
            return c.reply(), time.monotonic() - started, sent, c.closed()

        reply, took, sent, closed = await self.in_thread(trickle)
        self.assertEqual(reply, (421, "4.4.2 mx.test Error: DATA took too long"))
        self.assertTrue(closed)
        self.assertGreater(sent, 5)
        self.assertLess(took, 3)
        self.assertEqual(handler.messages, [])
