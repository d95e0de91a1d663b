"""
Fast unit tests of the inbound SMTP protocol (emaild.inbound.server) over a
StringTransport, with a task.Clock as the reactor: no sockets, no threads.
The end-to-end tests with real clients are in test_inbound_server.py.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from emaild.inbound.server import InboundFactory
from tests.inbound.test_inbound_server import MemoryHandler


class Session:
    """One protocol on a StringTransport; C{send} returns the new replies."""

    def __init__(self, factory: InboundFactory, host: str = "192.0.2.1", port: int = 4321):
        self.factory = factory
        address = IPv4Address("TCP", host, port)
        self.protocol = factory.buildProtocol(address)
        self.transport = StringTransport(peerAddress=address)
        self.protocol.makeConnection(self.transport)
        self.banner = self.take()

    def take(self) -> list[bytes]:
        out = self.transport.value().split(b"\r\n")[:-1]
        self.transport.clear()
        return out

    def send(self, data: bytes) -> list[bytes]:
        self.protocol.dataReceived(data)
        return self.take()

    def lose(self) -> None:
        self.protocol.connectionLost(None)


class UnitTestCase(TestCase):
    def factory(self, **kw) -> InboundFactory:
        self.clock = Clock()
        self.handler = MemoryHandler()
        return InboundFactory(self.handler, hostname="mx.test", reactor=self.clock, **kw)


class ReadinessTests(UnitTestCase):
    def test_not_ready_is_421_4_3_2_and_closed(self):
        ready = [False]
        factory = self.factory(is_ready=lambda: ready[0])
        s = Session(factory)
        self.assertEqual(s.banner, [b"421 4.3.2 Service not yet ready, try again later"])
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(factory.sessions, set())
        ready[0] = True
        s = Session(factory)
        self.assertEqual(s.banner, [b"220 mx.test ESMTP"])
        self.assertFalse(s.transport.disconnecting)

    def test_ready_by_default(self):
        self.assertEqual(Session(self.factory()).banner, [b"220 mx.test ESMTP"])

    def test_inbound_listener_passes_is_ready(self):
        from twisted.internet import reactor

        from emaild.config import load_config
        from emaild.inbound.server import inbound_listener

        config = load_config(None, environ={}, overrides={
            "smtp": {"endpoint": "tcp:0:interface=127.0.0.1"}})
        service = inbound_listener(config, MemoryHandler(), reactor, is_ready=lambda: False)
        self.assertFalse(service.factory.is_ready())
        self.assertTrue(inbound_listener(config, MemoryHandler(), reactor).factory.is_ready())


#: bytes the store cannot keep, or that are not text: every C0 control
#: (NUL, TAB, bare CR, ESC, ...), DEL, and UTF-8 that does not decode
CONTROL_BYTES = [bytes([b]) for b in (*range(0x00, 0x0A), *range(0x0B, 0x20), 0x7F)]
INVALID_UTF8 = [b"\xff", b"\xc3", b"\xc3(", b"\xed\xa0\x80", b"\xc0\xaf", b"\x80"]
VALID_NON_ASCII = ["caf\u00e9", "\u00fcber", "\u4f8b\u3048", "\U0001f600"]

#: (command template with {} where a byte goes, what comes before it)
PLACES = [
    (b"HELO x{}y", []),
    (b"EHLO x{}y", []),
    (b"MAIL FROM:<a{}b@example.org>", [b"EHLO c"]),
    (b"MAIL FROM:<a@exa{}mple.org>", [b"EHLO c"]),
    (b"MAIL FROM:<a@example.org> SIZE=1{}0", [b"EHLO c"]),
    (b"MAIL FROM:<a@example.org> BODY=8BIT{}MIME", [b"EHLO c"]),
    (b"MAIL FROM:<a@example.org> X{}Y=1", [b"EHLO c"]),
    (b"RCPT TO:<a{}b@relay.test>", [b"EHLO c", b"MAIL FROM:<>"]),
    (b"RCPT TO:<ab@relay.test> NOTIFY=NEV{}ER", [b"EHLO c", b"MAIL FROM:<>"]),
    (b"NOOP x{}y", []),
    (b"VRFY x{}y", []),
    (b"RSET{}", []),
    (b"DATA{}", [b"EHLO c", b"MAIL FROM:<>", b"RCPT TO:<a@relay.test>"]),
    (b"QUIT {}", []),
    (b"NO{}OP", []),
]


class EnvelopeCheckTests(UnitTestCase):
    def run_place(self, template: bytes, before: list[bytes], byte: bytes):
        s = Session(self.factory())
        for line in before:
            [reply] = [r for r in s.send(line + b"\r\n") if r[3:4] == b" "]
            self.assertTrue(reply.startswith(b"250"), (line, reply))
        replies = s.send(template.replace(b"{}", byte) + b"\r\n")
        return s, replies[-1]

    def test_control_bytes_refused_at_every_command(self):
        for template, before in PLACES:
            for byte in CONTROL_BYTES:
                s, reply = self.run_place(template, before, byte)
                self.assertRegex(reply.decode(), r"^501 5\.5\.2 .*contains a control character "
                                                 r"\(0x[0-9A-F]{2}\); refused$", (template, byte))
                self.assertIn(f"0x{byte[0]:02X}".encode(), reply)
                # the session goes on and nothing half-accepted is kept
                self.assertTrue(s.send(b"NOOP\r\n")[-1].startswith(b"250"))
                self.assertEqual(s.factory.handler.messages, [])

    def test_invalid_utf8_refused_at_every_command(self):
        for template, before in PLACES:
            for byte in INVALID_UTF8:
                s, reply = self.run_place(template, before, byte)
                self.assertRegex(reply.decode(), r"^501 5\.5\.2 .*is not valid UTF-8; refused$",
                                 (template, byte))

    def test_valid_non_ascii(self):
        expect = {
            b"HELO x{}y": b"501 5.5.2 HELO name is not ASCII",
            b"EHLO x{}y": b"501 5.5.2 EHLO name is not ASCII",
            b"MAIL FROM:<a{}b@example.org>": b"553 5.6.7 ",
            b"MAIL FROM:<a@exa{}mple.org>": b"553 5.6.7 ",
            b"MAIL FROM:<a@example.org> SIZE=1{}0": b"501 5.5.4 Bad parameter syntax",
            b"MAIL FROM:<a@example.org> BODY=8BIT{}MIME": b"501 5.5.4 Bad parameter syntax",
            b"MAIL FROM:<a@example.org> X{}Y=1": b"501 5.5.4 Bad parameter syntax",
            b"RCPT TO:<a{}b@relay.test>": b"553 5.6.7 ",
            b"RCPT TO:<ab@relay.test> NOTIFY=NEV{}ER": b"501 5.5.4 Bad parameter syntax",
            b"NOOP x{}y": b"250 ",  # harmless: NOOP's argument is ignored
            b"VRFY x{}y": b"252 ",
            b"RSET{}": b"500 5.5.2",
            b"DATA{}": b"500 5.5.2",
            b"QUIT {}": b"221 ",
            b"NO{}OP": b"500 5.5.2",
        }
        for template, before in PLACES:
            for text in VALID_NON_ASCII:
                s, reply = self.run_place(template, before, text.encode("utf-8"))
                self.assertTrue(reply.startswith(expect[template]), (template, text, reply))
                self.assertEqual(s.factory.handler.checks,
                                 [("a@relay.test", "")] if template == b"DATA{}" else [])

    def test_smtputf8_not_advertised_and_refused(self):
        s = Session(self.factory())
        self.assertNotIn(b"250-SMTPUTF8", s.send(b"EHLO c\r\n"))
        self.assertEqual(s.send(b"MAIL FROM:<a@example.org> SMTPUTF8\r\n"),
                         [b"555 5.5.4 SMTPUTF8 is not supported here"])
        self.assertEqual(s.send("MAIL FROM:<caf\u00e9@example.org> SMTPUTF8\r\n".encode()),
                         [b"553 5.6.7 non-ASCII addresses are not accepted here (no SMTPUTF8)"])

    def test_parameters(self):
        s = Session(self.factory(max_message_size=1000))
        s.send(b"EHLO c\r\n")
        for line, reply in [
            (b"MAIL FROM:<a@example.org> SIZE=", b"501 5.5.4 Bad parameter syntax: SIZE="),
            (b"MAIL FROM:<a@example.org> SIZE=x", b"501 5.5.4 Bad SIZE parameter"),
            (b"MAIL FROM:<a@example.org> SIZE", b"501 5.5.4 Bad SIZE parameter"),
            (b"MAIL FROM:<a@example.org> SIZE=" + b"9" * 21, b"501 5.5.4 Bad SIZE parameter"),
            (b"MAIL FROM:<a@example.org> SIZE=1001", b"552 5.3.4 Message size exceeds fixed limit"),
            (b"MAIL FROM:<a@example.org> SIZE=1 SIZE=1", b"501 5.5.4 Parameter SIZE given twice"),
            (b"MAIL FROM:<a@example.org> BODY=BINARYMIME", b"501 5.5.4 Bad BODY parameter"),
            (b"MAIL FROM:<a@example.org> RET=HDRS", b"555 5.5.4 Unsupported parameter RET"),
            (b"MAIL FROM:<a@example.org> -X", b"501 5.5.4 Bad parameter syntax: -X"),
            (b"MAIL FROM:<a@example.org> size=10 body=7bit", b"250 2.1.0 Ok"),
            (b"RCPT TO:<a@relay.test> ORCPT=rfc822;a@relay.test",
             b"555 5.5.4 Unsupported parameter ORCPT"),
            (b"RCPT TO:<a@relay.test> NOTIFY=NEVER", b"555 5.5.4 Unsupported parameter NOTIFY"),
        ]:
            self.assertEqual(s.send(line + b"\r\n"), [reply], line)
        self.assertEqual(self.handler.checks, [])

    def test_address_lengths(self):
        s = Session(self.factory())
        s.send(b"EHLO c\r\n")
        long_local = b"a" * 65 + b"@example.org"
        long_domain = b"a@" + b"d" * 256
        self.assertTrue(s.send(b"MAIL FROM:<" + long_local + b">\r\n")[0].startswith(b"501 5.1.7"))
        self.assertTrue(s.send(b"MAIL FROM:<" + long_domain + b">\r\n")[0].startswith(b"501 5.1.7"))
        self.assertEqual(s.send(b"MAIL FROM:<" + b"a" * 64 + b"@example.org>\r\n"),
                         [b"250 2.1.0 Ok"])
        self.assertTrue(s.send(b"RCPT TO:<" + long_local + b">\r\n")[0].startswith(b"501 5.1.3"))
        self.assertTrue(s.send(b"EHLO " + b"h" * 258 + b"\r\n")[0].startswith(b"501 5.5.2"))
        self.assertEqual(self.handler.checks, [])


class PathKeywordTests(UnitTestCase):
    def test_from_and_to_in_any_ascii_case_and_nothing_else(self):
        s = Session(self.factory())
        s.send(b"EHLO c\r\n")
        for line, reply in [
            (b"MAIL FROM <a@example.org>", b"501 5.5.4 Syntax: MAIL FROM:<address>"),
            (b"MAIL FROMX:<a@example.org>", b"501 5.5.4 Syntax: MAIL FROM:<address>"),
            (b"MAIL FR\xc3\x96M:<a@example.org>", b"501 5.5.4 Syntax: MAIL FROM:<address>"),
            (b"MAIL FRO", b"501 5.5.4 Syntax: MAIL FROM:<address>"),
            (b"MAIL fRoM:<a@example.org>", b"250 2.1.0 Ok"),
            (b"RCPT TO <a@relay.test>", b"501 5.5.4 Syntax: RCPT TO:<address>"),
            (b"RCPT T\xc3\x96:<a@relay.test>", b"501 5.5.4 Syntax: RCPT TO:<address>"),
            (b"RCPT T", b"501 5.5.4 Syntax: RCPT TO:<address>"),
            (b"RCPT tO:<a@relay.test>", b"250 2.1.5 Ok"),
            (b"RCPT to: <b@relay.test>", b"250 2.1.5 Ok"),
        ]:
            self.assertEqual(s.send(line + b"\r\n"), [reply], line)
        self.assertEqual(self.handler.checks, [("a@relay.test", "a@example.org"),
                                               ("b@relay.test", "a@example.org")])


class RecipientDedupTests(UnitTestCase):
    def test_repeated_rcpt_is_250_and_kept_once(self):
        s = Session(self.factory(max_recipients=3))
        s.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")
        replies = s.send(b"".join(b"RCPT TO:<%s@relay.test>\r\n" % name for name in
                                  [b"a", b"A", b"a", b"b"] + [b"a"] * 200))
        self.assertEqual(replies[:4], [b"250 2.1.5 Ok", b"250 2.1.5 Ok (already a recipient)",
                                       b"250 2.1.5 Ok (already a recipient)", b"250 2.1.5 Ok"])
        self.assertEqual(set(replies[4:]), {b"250 2.1.5 Ok (already a recipient)"})
        # asked once per spelling; repeats do not count against max_recipients
        self.assertEqual([a for a, _ in self.handler.checks], ["a@relay.test", "b@relay.test"])
        s.send(b"DATA\r\n")
        s.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        [(envelope, _)] = self.handler.messages
        self.assertEqual(envelope.recipients, (("rcpt", "a@relay.test"), ("rcpt", "b@relay.test")))

    def test_equal_results_are_one_recipient(self):
        factory = self.factory()
        factory.handler.check_recipient = lambda address, mail_from: ("member", 7)
        s = Session(factory)
        s.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\n")
        self.assertEqual(s.send(b"RCPT TO:<x@relay.test>\r\nRCPT TO:<y@relay.test>\r\n"),
                         [b"250 2.1.5 Ok", b"250 2.1.5 Ok (already a recipient)"])
        s.send(b"DATA\r\nx\r\n.\r\n")
        self.assertEqual(self.handler.messages[0][0].recipients, (("member", 7),))

    def test_rset_forgets_recipients(self):
        s = Session(self.factory())
        s.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@relay.test>\r\nRSET\r\nMAIL FROM:<>\r\n")
        self.assertEqual(s.send(b"RCPT TO:<a@relay.test>\r\n"), [b"250 2.1.5 Ok"])
        self.assertEqual(len(self.handler.checks), 2)


class DeadlineTests(UnitTestCase):
    def test_a_trickled_command_is_cut_off(self):
        s = Session(self.factory(idle_timeout=60, command_timeout=30))
        for _ in range(29):
            s.send(b"N")  # a byte a second keeps the idle timeout away…
            self.clock.advance(1)
        self.assertFalse(s.transport.disconnecting)
        self.clock.advance(1.5)  # …but not the command's deadline
        self.assertEqual(s.take(), [b"421 4.4.2 mx.test Error: command took too long"])
        self.assertTrue(s.transport.disconnecting)
        s.lose()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_each_command_gets_its_own_deadline(self):
        s = Session(self.factory(idle_timeout=60, command_timeout=30))
        for _ in range(5):
            self.clock.advance(20)
            self.assertEqual(s.send(b"NOOP\r\n"), [b"250 2.0.0 Ok"])
        self.assertFalse(s.transport.disconnecting)

    def session_whose_rcpt_waits(self):
        """A session with a 30 s command deadline whose RCPT check answers when told."""
        from twisted.internet import defer
        factory = self.factory(idle_timeout=0, command_timeout=30)
        pending: defer.Deferred = defer.Deferred()
        factory.handler.check_recipient = lambda address, mail_from: pending
        return Session(factory), pending

    def test_no_deadline_while_the_handler_decides(self):
        s, pending = self.session_whose_rcpt_waits()
        s.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@relay.test>\r\n")
        self.clock.advance(100)
        self.assertFalse(s.transport.disconnecting)
        pending.callback("ok")
        self.assertEqual(s.take(), [b"250 2.1.5 Ok"])
        self.clock.advance(31)
        self.assertTrue(s.transport.disconnecting)

    def test_a_wait_keeps_the_deadline_call_and_moves_it_on(self):
        # no cancel and new call per RCPT: the same call, due command_timeout
        # after the reply that ended the wait
        s, pending = self.session_whose_rcpt_waits()
        s.send(b"EHLO c\r\nMAIL FROM:<>\r\n")
        [before] = self.clock.getDelayedCalls()
        s.send(b"RCPT TO:<a@relay.test>\r\n")
        self.clock.advance(10)
        pending.callback("ok")
        self.assertEqual(s.take(), [b"250 2.1.5 Ok"])
        self.assertEqual(self.clock.getDelayedCalls(), [before])
        self.assertEqual(before.getTime(), 40)
        self.clock.advance(29)
        self.assertFalse(s.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(s.transport.disconnecting)

    def test_a_deadline_due_while_the_handler_decides_starts_again_after(self):
        s, pending = self.session_whose_rcpt_waits()
        s.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@relay.test>\r\n")
        self.clock.advance(45)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        pending.callback("ok")
        self.assertEqual(s.take(), [b"250 2.1.5 Ok"])
        self.assertEqual(s.send(b"NOOP\r\n"), [b"250 2.0.0 Ok"])
        self.clock.advance(29)
        self.assertFalse(s.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(s.transport.disconnecting)

    def test_a_trickled_data_phase_is_cut_off(self):
        s = Session(self.factory(idle_timeout=60, command_timeout=30, data_timeout=100))
        s.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@relay.test>\r\nDATA\r\n")
        for _ in range(99):
            s.send(b"line\r\n")  # whole lines, fast enough for both other timers
            self.clock.advance(1)
        self.assertFalse(s.transport.disconnecting)
        s.take()
        self.clock.advance(1.5)
        self.assertEqual(s.take(), [b"421 4.4.2 mx.test Error: DATA took too long"])
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(self.handler.messages, [])

    def test_data_within_its_deadline_then_commands_again(self):
        s = Session(self.factory(idle_timeout=0, command_timeout=30, data_timeout=100))
        s.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@relay.test>\r\nDATA\r\n")
        self.clock.advance(90)  # longer than a command may take: DATA has its own
        self.assertEqual(s.send(b"x\r\n.\r\n"), [b"250 2.0.0 Ok: queued as M1"])
        self.clock.advance(29)
        self.assertEqual(s.send(b"QUIT\r\n"), [b"221 2.0.0 Bye"])


class ClientLimitTests(UnitTestCase):
    def test_sessions_per_client(self):
        factory = self.factory(max_sessions=10, max_sessions_per_client=2)
        a1 = Session(factory, "192.0.2.1")
        Session(factory, "192.0.2.1", 2)
        a3 = Session(factory, "192.0.2.1", 3)
        self.assertEqual(a3.banner, [b"421 4.7.0 too many sessions from your address, "
                                     b"try again later"])
        self.assertTrue(a3.transport.disconnecting)
        self.assertEqual(Session(factory, "192.0.2.2").banner, [b"220 mx.test ESMTP"])
        a1.lose()
        self.assertEqual(Session(factory, "192.0.2.1", 4).banner, [b"220 mx.test ESMTP"])
        self.assertEqual(factory.clients.open_sessions("192.0.2.1"), 2)
        self.assertEqual(factory.metrics.registry.get_sample_value(
            "emaild_inbound_smtp_sessions_total", {"result": "client_limit"}), 1)

    def test_connections_per_minute(self):
        factory = self.factory(max_connections_per_minute=3)
        for i in range(3):
            s = Session(factory, "192.0.2.1", i)
            self.assertEqual(s.banner, [b"220 mx.test ESMTP"])
            s.send(b"QUIT\r\n")
            s.lose()
            self.clock.advance(10)
        over = Session(factory, "192.0.2.1", 9)
        self.assertEqual(over.banner, [b"421 4.7.0 too many connections from your address in "
                                       b"the last minute, try again later"])
        self.assertEqual(Session(factory, "192.0.2.2").banner, [b"220 mx.test ESMTP"])
        self.clock.advance(31)  # the first connection is over a minute old
        self.assertEqual(Session(factory, "192.0.2.1", 10).banner, [b"220 mx.test ESMTP"])

    def test_an_ipv6_client_is_its_64(self):
        from twisted.internet.address import IPv6Address

        from emaild.inbound.limits import client_key

        self.assertEqual(client_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(client_key("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(client_key("192.0.2.7"), "192.0.2.7")
        factory = self.factory(max_sessions_per_client=1)
        first = factory.buildProtocol(IPv6Address("TCP", "2001:db8::1", 1))
        first.makeConnection(StringTransport(peerAddress=IPv6Address("TCP", "2001:db8::1", 1)))
        second = factory.buildProtocol(IPv6Address("TCP", "2001:db8::ffff", 2))
        transport = StringTransport()
        second.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"421 4.7.0 too many sessions"))


class OrderTests(UnitTestCase):
    def test_a_deferred_called_but_paused_still_holds_the_next_lines(self):
        from twisted.internet import defer

        factory = self.factory()
        inner = defer.Deferred()
        outer = defer.succeed(None)
        outer.addCallback(lambda _: inner)  # called, but its result is not there yet
        factory.handler.check_recipient = lambda address, mail_from: outer
        s = Session(factory)
        s.send(b"EHLO c\r\nMAIL FROM:<>\r\n")
        self.assertEqual(s.send(b"RCPT TO:<a@relay.test>\r\nNOOP\r\n"), [])
        self.assertTrue(s.protocol.paused)  # no line is read meanwhile
        inner.callback(("rcpt", "a"))
        self.assertEqual(s.take(), [b"250 2.1.5 Ok", b"250 2.0.0 Ok"])
        self.assertFalse(s.protocol.paused)
        self.assertEqual(s.transport.producerState, "producing")

    def test_a_client_that_floods_while_the_handler_decides_is_paused(self):
        """
        While the handler decides, the socket is read on (a client that
        waits for its reply, as almost all do, costs no pause and resume of
        the socket), but past WAIT_BUFFER_LIMIT octets it is paused, so a
        flood cannot fill memory; every line is still read in order after.
        """
        from twisted.internet import defer

        from emaild.inbound.lines import WAIT_BUFFER_LIMIT

        factory = self.factory()
        answer = defer.Deferred()
        factory.handler.check_recipient = lambda address, mail_from: answer
        s = Session(factory)
        s.send(b"EHLO c\r\nMAIL FROM:<>\r\n")
        self.assertEqual(s.send(b"RCPT TO:<a@relay.test>\r\n"), [])
        noop = b"NOOP " + b"x" * 993 + b"\r\n"  # 1000 octets, the longest command
        count = WAIT_BUFFER_LIMIT // len(noop)
        self.assertEqual(s.send(noop * count), [])
        self.assertEqual(s.transport.producerState, "producing")
        self.assertEqual(s.send(noop), [])
        self.assertEqual(s.transport.producerState, "paused")
        answer.callback(("rcpt", "a"))
        replies = s.take()
        self.assertEqual(replies[0], b"250 2.1.5 Ok")
        self.assertEqual(replies[1:], [b"250 2.0.0 Ok"] * (count + 1))
        self.assertEqual(s.transport.producerState, "producing")
        # the next wait starts counting afresh
        self.assertEqual(s.send(b"RSET\r\nMAIL FROM:<>\r\nRCPT TO:<b@relay.test>\r\n"),
                         [b"250 2.0.0 Ok", b"250 2.1.0 Ok", b"250 2.1.5 Ok"])


class LineLayerTests(UnitTestCase):
    """The guarantees of inbound/lines.py on LineReceiver, byte by byte."""

    def test_command_line_limit_whole_and_in_pieces(self):
        from emaild.inbound.server import COMMAND_LINE_LIMIT

        s = Session(self.factory())
        ok = b"NOOP " + b"x" * (COMMAND_LINE_LIMIT - 7) + b"\r\n"
        self.assertEqual(len(ok), COMMAND_LINE_LIMIT)
        self.assertEqual(s.send(ok), [b"250 2.0.0 Ok"])
        for byte in ok[:-1]:  # one byte at a time: no limit reached early
            self.assertEqual(s.send(bytes([byte])), [])
        self.assertEqual(s.send(b"\n"), [b"250 2.0.0 Ok"])
        self.assertEqual(s.send(b"x" * COMMAND_LINE_LIMIT), [b"500 5.5.6 Line too long"])
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(s.send(b"NOOP\r\n"), [])  # nothing more is read

    def test_data_line_limit_and_no_fall_back_to_commands(self):
        from emaild.inbound.server import DATA_LINE_LIMIT

        s = Session(self.factory())
        s.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@relay.test>\r\nDATA\r\n")
        self.assertEqual(s.send(b"y" * (DATA_LINE_LIMIT - 2) + b"\r\n"), [])
        self.assertEqual(s.send(b"y" * (DATA_LINE_LIMIT - 1) + b"\r\nRCPT TO:<evil@relay.test>\r\n"),
                         [b"500 5.5.6 Line too long"])
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual([a for a, _ in self.handler.checks], ["a@relay.test"])

    def test_only_crlf_dot_crlf_ends_data_and_bare_lf_commands_work(self):
        s = Session(self.factory())
        self.assertEqual(s.send(b"EHLO c\nMAIL FROM:<>\nRCPT TO:<a@relay.test>\nDATA\n")[-1],
                         b"354 End data with <CR><LF>.<CR><LF>")
        self.assertEqual(s.send(b"one\n.\nRSET\n.\n"), [])  # bare LFs end nothing
        self.assertEqual(s.send(b"\r\n.\r\n"), [b"250 2.0.0 Ok: queued as M1"])
        [(envelope, raw)] = self.handler.messages
        self.assertTrue(raw.endswith(b"\r\none\n.\nRSET\n.\n\r\n"), raw)

    def test_pipelined_lines_wait_for_the_handler_in_order(self):
        from twisted.internet import defer

        factory = self.factory()
        answers = []
        factory.handler.check_recipient = lambda address, mail_from: answers.append(
            defer.Deferred()) or answers[-1]
        s = Session(factory)
        s.send(b"EHLO c\r\nMAIL FROM:<>\r\n")
        self.assertEqual(s.send(b"RCPT TO:<a@relay.test>\r\nRCPT TO:<b@relay.test>\r\n"
                                b"NOOP\r\n"), [])
        self.assertEqual(len(answers), 1)  # the second RCPT was not read yet
        answers[0].callback(1)
        self.assertEqual(s.take(), [b"250 2.1.5 Ok"])
        answers[1].callback(2)
        self.assertEqual(s.take(), [b"250 2.1.5 Ok", b"250 2.0.0 Ok"])


class PrintableTests(TestCase):
    def test_only_printable_ascii_survives_in_both_paths(self):
        from emaild.inbound.syntax import printable
        self.assertEqual(printable("mx.example.org [192.0.2.1]", 10), "mx.example")
        for text, shown in (("caf\u00e9", "caf?"), ("a\u00a0b", "a?b"), ("a\tb\x00", "a?b?"),
                            ("\u2028x\x7f", "?x?"), ("", "")):
            self.assertEqual(printable(text), shown)


class ParsePathTests(TestCase):
    def test_every_byte_anywhere_in_a_path_is_judged_as_byte_by_byte(self):
        from emaild.inbound.syntax import parse_path

        def byte_by_byte(rest: bytes):  # parse_path as it was, with its byte loop
            rest = rest.strip()
            if rest.startswith(b"<"):
                end = rest.find(b">")
                if end < 0:
                    raise ValueError("no closing >")
                path, tail = rest[1:end], rest[end + 1:]
                if tail and not tail[:1].isspace():
                    raise ValueError("text after >")
            else:
                path, _, tail = rest.partition(b" ")
                if not path:
                    raise ValueError("no address")
            if path.startswith(b"@"):
                colon = path.find(b":")
                if colon < 0:
                    raise ValueError("bad source route")
                path = path[colon + 1:]
            if any(c <= 0x20 or c == 0x7F for c in path) or b"<" in path:
                raise ValueError("bad character")
            address = path.decode("utf-8")
            if len(address) > 256:
                raise ValueError("too long")
            return address, tail.split()

        def outcome(parse, command):
            try:
                return parse(command)
            except ValueError:
                return "refused"

        refused = 0
        for byte in range(256):
            for path in (bytes([byte]) + b"a@b.example", b"a" + bytes([byte]) + b"@b.example",
                         b"a@b.example" + bytes([byte])):
                for command in (b"<" + path + b">", path, b"<@route:" + path + b"> X=1"):
                    expected = outcome(byte_by_byte, command)
                    refused += expected == "refused"
                    self.assertEqual(outcome(parse_path, command), expected, command)
        self.assertGreater(refused, 34 * 3)


class RawDataTests(UnitTestCase):
    """DATA is read in chunks: any cut through the message gives the same result."""

    BODY = (b"Subject: cuts\r\n\r\n..stuffed line\r\n. \r\nnot the end: .\r\n"
            b"bare\nLF.\n.\r\r\n. x\r\n" + b"y" * 300 + b"\r\n.end\r\n")
    STORED = (b"Subject: cuts\r\n\r\n.stuffed line\r\n \r\nnot the end: .\r\n"
              b"bare\nLF.\n.\r\r\n x\r\n" + b"y" * 300 + b"\r\nend\r\n")

    def start(self, **kw) -> Session:
        s = Session(self.factory(**kw))
        s.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@relay.test>\r\nDATA\r\n")
        return s

    def stored_body(self, index: int = -1) -> bytes:
        raw = self.handler.messages[index][1]
        return raw[raw.index(b"Subject:"):]

    def test_every_cut_in_two_gives_the_same_message(self):
        data = b".x\r\n" + self.BODY + b".\r\nNOOP\r\n"
        for cut in range(len(data) + 1):
            s = self.start()
            replies = s.send(data[:cut]) + s.send(data[cut:])
            self.assertEqual(replies, [b"250 2.0.0 Ok: queued as M1",
                                       b"250 2.0.0 Ok"], cut)
            raw = self.handler.messages[-1][1]
            self.assertTrue(raw.endswith(b"\r\nx\r\n" + self.STORED), cut)
            self.assertEqual(self.handler.messages[-1][0].size, len(b"x\r\n" + self.STORED))

    def test_byte_by_byte(self):
        s = self.start()
        s.take()
        for byte in self.BODY + b".\r\n":
            s.send(bytes([byte]))
        self.assertEqual(self.stored_body(), self.STORED)

    def test_an_empty_message_and_pipelined_commands_after_the_dot(self):
        s = self.start()
        s.take()
        replies = s.send(b".\r\nRSET\r\nMAIL FROM:<>\r\n")
        self.assertEqual(replies[1:], [b"250 2.0.0 Ok", b"250 2.1.0 Ok"])
        self.assertTrue(self.handler.messages[-1][1].endswith(b"\r\n"))
        self.assertEqual(self.handler.messages[-1][0].size, 0)

    def test_a_long_line_split_across_chunks_is_500_and_closed(self):
        from emaild.inbound.lines import DATA_LINE_LIMIT
        s = self.start()
        s.take()
        s.send(b"ok\r\n" + b"z" * (DATA_LINE_LIMIT // 2))
        self.assertFalse(s.transport.disconnecting)
        self.assertEqual(s.send(b"z" * (DATA_LINE_LIMIT // 2)), [b"500 5.5.6 Line too long"])
        self.assertTrue(s.transport.disconnecting)
        self.assertEqual(self.handler.messages, [])

    def test_a_long_line_among_complete_lines_is_500_and_closed(self):
        from emaild.inbound.lines import DATA_LINE_LIMIT
        s = self.start()
        s.take()
        longest = b"a" * (DATA_LINE_LIMIT - 2) + b"\r\n"
        s.send(longest * 2)  # at the limit: fine
        self.assertFalse(s.transport.disconnecting)
        self.assertEqual(s.send(b"b\r\n" + b"c" * (DATA_LINE_LIMIT - 1) + b"\r\n.\r\n"),
                         [b"500 5.5.6 Line too long"])
        self.assertEqual(self.handler.messages, [])

    def test_size_limit_counts_unstuffed_octets_and_reads_to_the_dot(self):
        s = self.start(max_message_size=100)
        s.take()
        s.send((b"." + b"q" * 48 + b"\r\n") * 2)  # 2 x 50 octets after unstuffing: at the limit
        self.assertEqual(s.send(b".\r\n"), [b"250 2.0.0 Ok: queued as M1"])
        s.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<r@relay.test>\r\nDATA\r\n")
        self.assertEqual(s.send(b"q" * 99 + b"\r\n.\r\nNOOP\r\n"),
                         [b"552 5.3.4 Message size exceeds fixed limit", b"250 2.0.0 Ok"])
        self.assertEqual(len(self.handler.messages), 1)


class ReceivedHeaderTests(UnitTestCase):
    def test_the_date_is_the_reactors_second_also_across_seconds(self):
        factory = self.factory()
        self.clock.advance(1_800_000_000.7)
        s = Session(factory)
        s.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@relay.test>\r\nDATA\r\nx\r\n.\r\n")
        self.clock.advance(1)
        s.send(b"MAIL FROM:<>\r\nRCPT TO:<a@relay.test>\r\nDATA\r\ny\r\n.\r\n")
        dates = [raw.split(b"\r\n")[2] for _, raw in self.handler.messages]
        self.assertEqual(dates, [b"\tFri, 15 Jan 2027 08:00:00 +0000",
                                 b"\tFri, 15 Jan 2027 08:00:01 +0000"])
