"""
Tests for the smtp transport, against the loopback relay in tests/relay.py
over real sockets on 127.0.0.1.
"""

from __future__ import annotations

from twisted.internet import defer, reactor, ssl, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from emaild.outbound.smtp import SMTPTransport, load_trust_root
from emaild.outbound.smtpclient import SMTPClientProtocol
from emaild.outbound.smtpwire import classify, prepare_data
from emaild.outbound.transport import IDeliveryTransport, Outcome, OutgoingMessage
from tests.relay import Relay
from tests.tlsfiles import make_tls_files

_tls = None


def tls_files():
    global _tls
    if _tls is None:
        _tls = make_tls_files()
    return _tls


def message(n=1, recipient="alice@example.org", data=None, sender="bounces@relay.example"):
    if data is None:
        data = b"From: course@example.org\nTo: %s\nSubject: test %d\n\nHello %d.\n" % (
            recipient.encode(), n, n)
    return OutgoingMessage(id=n, sender=sender, recipient=recipient, data=data)


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def slow_reply(seconds, code=250, text="2.0.0 Ok"):
    return lambda msg: task.deferLater(reactor, seconds, lambda: (code, text))


class TransportTestCase(TestCase):
    def relay(self, **kw) -> Relay:
        relay = Relay(reactor, **kw)
        relay.start()
        self.addCleanup(relay.stop)
        return relay

    def transport(self, relay_or_port, **kw) -> SMTPTransport:
        port = relay_or_port if isinstance(relay_or_port, int) else relay_or_port.port
        kw.setdefault("tls", "none")
        kw.setdefault("helo_name", "client.test")
        kw.setdefault("connect_timeout", 5.0)
        kw.setdefault("reply_timeout", 5.0)
        kw.setdefault("data_timeout", 5.0)
        host = kw.pop("host", "127.0.0.1")
        transport = SMTPTransport(reactor, host, port, **kw)

        async def shut():
            transport.abort()
            await transport.close()

        self.addCleanup(lambda: defer.ensureDeferred(shut()))
        return transport

    def tls_relay(self, pem=None, **kw) -> Relay:
        return self.relay(tls_pem=pem or tls_files().localhost_pem, **kw)

    def tls_transport(self, relay, **kw) -> SMTPTransport:
        kw.setdefault("tls", "starttls")
        kw.setdefault("host", "localhost")
        return self.transport(relay, trust_roots_pem=tls_files().ca_path, **kw)

    def assertNoMail(self, relay):
        commands = [c.upper() for c in relay.all_commands()]
        self.assertFalse([c for c in commands if c.startswith((b"MAIL", b"RCPT", b"DATA"))],
                         commands)
        self.assertEqual(relay.messages, [])


class DeliveryTests(TransportTestCase):
    def test_interface(self):
        relay = self.relay()
        self.assertTrue(verifyObject(IDeliveryTransport, self.transport(relay)))

    async def _several_over_one_connection(self, pipelining):
        relay = self.relay(pipelining=pipelining)
        t = self.transport(relay, connections=1)
        results = await defer.gatherResults([t.deliver(message(i)) for i in range(5)])
        self.assertEqual([r.outcome for r in results], [Outcome.SENT] * 5)
        self.assertEqual(results[0].code, 250)
        # and once more after the queue drained: the idle connection is reused
        result = await t.deliver(message(5))
        self.assertEqual(result.outcome, Outcome.SENT)
        self.assertEqual(relay.connections, 1)
        self.assertEqual(len(relay.messages), 6)
        self.assertEqual(relay.messages[2].recipients, ["alice@example.org"])
        self.assertEqual(relay.messages[2].mail_from, "bounces@relay.example")
        self.assertEqual(relay.messages[2].data, prepare_data(message(2).data)[:-3])
        await t.close()
        self.assertEqual(relay.sessions[0].commands[-1], b"QUIT")
        self.assertTrue(relay.sessions[0].closed)

    def test_several_messages_one_connection_pipelining(self):
        return defer.ensureDeferred(self._several_over_one_connection(True))

    def test_several_messages_one_connection_no_pipelining(self):
        return defer.ensureDeferred(self._several_over_one_connection(False))

    async def test_pipelining_sends_envelope_together(self):
        # With PIPELINING, MAIL, RCPT and DATA leave in one write, so the
        # server gets them before it has answered MAIL.
        relay = self.relay(pipelining=True)
        t = self.transport(relay)
        self.assertEqual((await t.deliver(message())).outcome, Outcome.SENT)
        commands = relay.sessions[0].commands
        i = next(i for i, c in enumerate(commands) if c.startswith(b"MAIL"))
        self.assertEqual([c[:4] for c in commands[i:i + 3]], [b"MAIL", b"RCPT", b"DATA"])

    async def test_connections_cap_and_capacity(self):
        relay = self.relay(data_policy=slow_reply(0.2))
        t = self.transport(relay, connections=3)
        self.assertEqual(t.capacity(), 3)
        ds = [t.deliver(message(i)) for i in range(9)]
        self.assertEqual(t.capacity(), 0)
        results = await defer.gatherResults(ds)
        self.assertEqual({r.outcome for r in results}, {Outcome.SENT})
        self.assertEqual(relay.max_active, 3)
        self.assertEqual(relay.connections, 3)
        self.assertEqual(t.capacity(), 3)  # three idle connections

    async def test_max_messages_per_connection(self):
        relay = self.relay()
        t = self.transport(relay, connections=1, max_messages_per_connection=2)
        for i in range(5):
            self.assertEqual((await t.deliver(message(i))).outcome, Outcome.SENT)
        self.assertEqual(relay.connections, 3)
        self.assertEqual(relay.sessions[0].commands[-1], b"QUIT")

    async def test_idle_close(self):
        relay = self.relay()
        t = self.transport(relay, idle_close=0.2)
        self.assertEqual((await t.deliver(message())).outcome, Outcome.SENT)
        for _ in range(100):  # closes after 0.2 s; allow a loaded machine 5 s
            # both ends must have seen the close: the relay's side may see
            # it a moment before our pool forgets the connection
            if relay.sessions[0].closed and t.capacity() == 4:
                break
            await sleep(0.05)
        self.assertTrue(relay.sessions[0].closed)
        self.assertEqual(relay.sessions[0].commands[-1], b"QUIT")
        self.assertEqual(t.capacity(), 4)
        self.assertEqual((await t.deliver(message(2))).outcome, Outcome.SENT)
        self.assertEqual(relay.connections, 2)

    async def test_size_and_8bitmime(self):
        relay = self.relay(size=10_000_000, eightbitmime=True)
        t = self.transport(relay)
        eight = message(1, data=b"Subject: caf\xc3\xa9\n\nna\xefve \xff\n")
        r1, r2 = await defer.gatherResults([t.deliver(eight), t.deliver(message(2))])
        self.assertEqual((r1.outcome, r2.outcome), (Outcome.SENT, Outcome.SENT))
        by_id = {m.data: m for m in relay.messages}
        m1 = by_id[b"Subject: caf\xc3\xa9\r\n\r\nna\xefve \xff\r\n"]
        self.assertIn(b" SIZE=", m1.mail_command)
        self.assertIn(b" BODY=8BITMIME", m1.mail_command)
        m2 = [m for m in relay.messages if m is not m1][0]
        self.assertNotIn(b"BODY=", m2.mail_command)

    async def test_no_8bitmime_param_unless_offered(self):
        relay = self.relay()
        t = self.transport(relay)
        r = await t.deliver(message(data=b"Subject: x\n\n\xe9\n"))
        self.assertEqual(r.outcome, Outcome.SENT)
        self.assertEqual(relay.messages[0].mail_command,
                         b"MAIL FROM:<bounces@relay.example>")
        self.assertEqual(relay.messages[0].data, b"Subject: x\r\n\r\n\xe9\r\n")


class ReplyClassificationTests(TransportTestCase):
    async def _recipients(self, pipelining):
        def policy(rcpt):
            return {"bob@example.org": (550, "5.1.1 user unknown"),
                    "carol@example.org": (450, "4.2.1 mailbox busy")}.get(rcpt)

        relay = self.relay(rcpt_policy=policy, pipelining=pipelining)
        t = self.transport(relay, connections=1)
        results = await defer.gatherResults([
            t.deliver(message(1, "bob@example.org")),
            t.deliver(message(2, "carol@example.org")),
            t.deliver(message(3, "alice@example.org")),
        ])
        bob, carol, alice = results
        self.assertEqual(bob.outcome, Outcome.FAILED)
        self.assertEqual(bob.code, 550)
        self.assertEqual(bob.reply, "RCPT TO: 550 5.1.1 user unknown")
        self.assertEqual(carol.outcome, Outcome.RETRY)
        self.assertEqual(carol.code, 450)
        self.assertEqual(carol.reply, "RCPT TO: 450 4.2.1 mailbox busy")
        self.assertEqual(alice.outcome, Outcome.SENT)
        # failed transactions were reset and the connection kept going
        self.assertEqual(relay.connections, 1)
        self.assertIn(b"RSET", relay.sessions[0].commands)
        self.assertEqual([m.recipients for m in relay.messages], [["alice@example.org"]])

    def test_rcpt_refusals_pipelining(self):
        return defer.ensureDeferred(self._recipients(True))

    def test_rcpt_refusals_no_pipelining(self):
        return defer.ensureDeferred(self._recipients(False))

    async def _end_of_data(self, code, text):
        relay = self.relay(data_policy=lambda msg: (code, text))
        t = self.transport(relay)
        return await t.deliver(message())

    async def test_throttled(self):
        r = await self._end_of_data(454, "Throttling failure: Maximum sending rate exceeded.")
        self.assertEqual(r.outcome, Outcome.THROTTLED)
        self.assertEqual(r.code, 454)
        self.assertEqual(r.reply, "Throttling failure: Maximum sending rate exceeded.")

    async def test_daily_quota(self):
        r = await self._end_of_data(454, "Throttling failure: Daily message quota exceeded.")
        self.assertEqual(r.outcome, Outcome.QUOTA)

    async def test_552_after_data_fails(self):
        r = await self._end_of_data(552, "5.3.4 Message too big")
        self.assertEqual((r.outcome, r.code, r.reply),
                         (Outcome.FAILED, 552, "5.3.4 Message too big"))

    async def test_4xx_after_data_retries(self):
        r = await self._end_of_data(451, "4.3.0 try again\nlater please")
        self.assertEqual((r.outcome, r.code, r.reply),
                         (Outcome.RETRY, 451, "4.3.0 try again\nlater please"))

    async def test_421_closes_the_connection(self):
        relay = self.relay(rcpt_policy=lambda rcpt: (421, "4.4.2 closing, bye")
                           if rcpt.startswith("bye") else None)
        t = self.transport(relay, connections=1)
        r = await t.deliver(message(1, "bye@example.org"))
        self.assertEqual((r.outcome, r.code), (Outcome.RETRY, 421))
        self.assertEqual((await t.deliver(message(2))).outcome, Outcome.SENT)
        self.assertEqual(relay.connections, 2)

    def test_classify(self):
        self.assertEqual(classify(250, "ok"), Outcome.SENT)
        self.assertEqual(classify(454, "Throttling failure: Maximum sending rate exceeded."),
                         Outcome.THROTTLED)
        self.assertEqual(classify(454, "4.7.0 rate exceeded"), Outcome.THROTTLED)
        self.assertEqual(classify(454, "Throttling failure: Daily message quota exceeded."),
                         Outcome.QUOTA)
        self.assertEqual(classify(454, "4.7.0 TLS not available"), Outcome.RETRY)
        self.assertEqual(classify(421, "closing"), Outcome.RETRY)
        self.assertEqual(classify(550, "no"), Outcome.FAILED)


class FailureTests(TransportTestCase):
    async def test_connection_dropped_mid_data(self):
        relay = self.relay(drop_mid_data=1)
        t = self.transport(relay)
        r = await t.deliver(message(data=b"Subject: x\n\n" + b"line\n" * 50000))
        self.assertEqual(r.outcome, Outcome.RETRY)
        self.assertIsNone(r.code)
        self.assertIn("connection lost during DATA", r.reply)
        # the next message gets a fresh connection
        relay.drop_mid_data = False
        self.assertEqual((await t.deliver(message(2))).outcome, Outcome.SENT)

    async def test_silent_server_reply_timeout(self):
        relay = self.relay(silent=True)
        t = self.transport(relay, reply_timeout=0.5)
        r = await t.deliver(message())
        self.assertEqual(r.outcome, Outcome.RETRY)
        self.assertIn("timed out after 0.5s waiting for the reply to greeting", r.reply)

    async def test_no_reply_after_data_timeout(self):
        relay = self.relay(data_policy=lambda msg: None)
        t = self.transport(relay, reply_timeout=5.0, data_timeout=0.5)
        r = await t.deliver(message())
        self.assertEqual(r.outcome, Outcome.RETRY)
        self.assertIn("timed out after 0.5s waiting for the reply to DATA", r.reply)

    async def test_closed_port(self):
        relay = self.relay()
        port = relay.port
        await relay.stop()
        t = self.transport(port)
        results = await defer.gatherResults([t.deliver(message(i)) for i in range(6)])
        for r in results:
            self.assertEqual(r.outcome, Outcome.RETRY)
            self.assertIn(f"could not connect to 127.0.0.1:{port}", r.reply)
        self.assertEqual(t.capacity(), 4)

    async def test_injection_refused(self):
        relay = self.relay()
        t = self.transport(relay)
        for m in (message(recipient="a@b>\r\nRCPT TO:<c@d"),
                  message(recipient="a@b\nDATA"),
                  message(recipient="a b@c"),
                  message(sender="x@y> SIZE=1")):
            r = await t.deliver(m)
            self.assertEqual(r.outcome, Outcome.FAILED)
            self.assertIn("refusing", r.reply)
        self.assertEqual(relay.connections, 0)

    async def test_close_waits_for_in_flight(self):
        relay = self.relay(data_policy=slow_reply(0.3))
        t = self.transport(relay)
        in_flight = t.deliver(message(1))
        await sleep(0.05)
        closing = t.close()
        order = []
        in_flight.addCallback(lambda r: order.append("delivered") or r)
        closing.addCallback(lambda _: order.append("closed"))
        late = await t.deliver(message(2))
        self.assertEqual((late.outcome, late.reply), (Outcome.RETRY, "transport closing"))
        self.assertEqual(t.capacity(), 0)
        await closing
        self.assertEqual(order, ["delivered", "closed"])
        self.assertEqual((await in_flight).outcome, Outcome.SENT)
        self.assertEqual(relay.sessions[0].commands[-1], b"QUIT")
        self.assertTrue(relay.sessions[0].closed)

    async def test_close_when_idle(self):
        relay = self.relay()
        t = self.transport(relay)
        await t.close()  # no connection yet
        t = self.transport(relay)
        await t.deliver(message())
        await t.close()
        self.assertEqual(relay.sessions[0].commands[-1], b"QUIT")

    async def test_abort(self):
        relay = self.relay(data_policy=lambda msg: None)
        t = self.transport(relay, connections=1)
        ds = [t.deliver(message(i)) for i in range(3)]
        await sleep(0.2)
        t.abort()
        results = await defer.gatherResults(ds)
        self.assertEqual({r.outcome for r in results}, {Outcome.RETRY})
        self.assertIn("aborted", results[0].reply)
        await t.close()
        self.assertEqual((await t.deliver(message(9))).reply, "transport closing")


    async def test_abort_while_waiting_for_greeting(self):
        relay = self.relay(silent=True)
        t = self.transport(relay)
        d = t.deliver(message())
        await sleep(0.1)
        t.abort()
        r = await d
        self.assertEqual(r.outcome, Outcome.RETRY)
        self.assertIn("transport aborted during greeting", r.reply)
        await t.close()


class TLSTests(TransportTestCase):
    async def test_starttls(self):
        relay = self.tls_relay(require_tls=True)
        t = self.tls_transport(relay)
        r = await t.deliver(message())
        self.assertEqual(r.outcome, Outcome.SENT, r.reply)
        self.assertTrue(relay.messages[0].tls)
        commands = relay.sessions[0].commands
        self.assertEqual([c.split()[0] for c in commands[:3]], [b"EHLO", b"STARTTLS", b"EHLO"])

    async def test_wrong_hostname(self):
        relay = self.tls_relay(tls_files().wrong_host_pem)
        t = self.tls_transport(relay)
        r = await t.deliver(message())
        self.assertEqual(r.outcome, Outcome.RETRY)
        self.assertIn("certificate check failed", r.reply)
        self.assertNoMail(relay)

    async def test_untrusted_certificate(self):
        relay = self.tls_relay(tls_files().self_signed_pem)
        t = self.tls_transport(relay)
        r = await t.deliver(message())
        self.assertEqual(r.outcome, Outcome.RETRY)
        self.assertIn("certificate check failed", r.reply)
        self.assertNoMail(relay)

    async def test_no_starttls_offered(self):
        relay = self.relay()
        t = self.tls_transport(relay, username="user", password="secret")
        results = await defer.gatherResults([t.deliver(message(i)) for i in range(3)])
        for r in results:
            self.assertEqual(r.outcome, Outcome.RETRY)
            self.assertIn("offers no STARTTLS", r.reply)
        self.assertNoMail(relay)
        self.assertFalse([c for c in relay.all_commands() if c.upper().startswith(b"AUTH")])

    async def test_implicit_tls(self):
        relay = self.tls_relay(implicit_tls=True)
        t = self.tls_transport(relay, tls="implicit", host="127.0.0.1")
        r = await t.deliver(message())
        self.assertEqual(r.outcome, Outcome.SENT, r.reply)
        self.assertTrue(relay.messages[0].tls)
        self.assertNotIn(b"STARTTLS", relay.sessions[0].commands)

    async def test_implicit_tls_wrong_hostname(self):
        relay = self.tls_relay(tls_files().wrong_host_pem, implicit_tls=True)
        t = self.tls_transport(relay, tls="implicit")
        r = await t.deliver(message())
        self.assertEqual(r.outcome, Outcome.RETRY)
        self.assertIn("certificate check failed", r.reply)
        self.assertNoMail(relay)

    async def test_trust_roots_as_pem_bytes(self):
        relay = self.tls_relay()
        t = self.transport(relay, tls="starttls", host="localhost",
                           trust_roots_pem=tls_files().ca_pem)
        self.assertEqual((await t.deliver(message())).outcome, Outcome.SENT)

    async def test_auth_plain(self):
        relay = self.tls_relay(auth=(b"user", b"s3cret"))
        t = self.tls_transport(relay, username="user", password="s3cret")
        r = await t.deliver(message())
        self.assertEqual(r.outcome, Outcome.SENT, r.reply)
        self.assertEqual(relay.messages[0].user, b"user")
        self.assertIn(b"AUTH PLAIN", relay.sessions[0].commands)

    async def test_auth_login(self):
        relay = self.tls_relay(auth=(b"user", b"s3cret"), auth_mechanisms=(b"LOGIN",))
        t = self.tls_transport(relay, username="user", password="s3cret")
        r = await t.deliver(message())
        self.assertEqual(r.outcome, Outcome.SENT, r.reply)
        self.assertIn(b"AUTH LOGIN", relay.sessions[0].commands)

    async def test_auth_refused(self):
        relay = self.tls_relay(auth=(b"user", b"s3cret"))
        t = self.tls_transport(relay, username="user", password="wrong")
        r = await t.deliver(message())
        self.assertEqual((r.outcome, r.code), (Outcome.RETRY, 535))
        self.assertTrue(r.reply.startswith("relay refused our credentials: 535"), r.reply)
        self.assertNoMail(relay)


class DataTests(TransportTestCase):
    def test_prepare_data(self):
        self.assertEqual(prepare_data(b""), b".\r\n")
        self.assertEqual(prepare_data(b"a"), b"a\r\n.\r\n")
        self.assertEqual(prepare_data(b".\n"), b"..\r\n.\r\n")
        self.assertEqual(prepare_data(b"a\rb\nc\r\nd\r\r\n"),
                         b"a\r\nb\r\nc\r\nd\r\n\r\n.\r\n")
        self.assertEqual(prepare_data(b".a\n.\n..\nb\n.\n.\n."),
                         b"..a\r\n..\r\n...\r\nb\r\n..\r\n..\r\n..\r\n.\r\n")
        self.assertEqual(prepare_data(b"\xff\x00\xe9.\n"), b"\xff\x00\xe9.\r\n.\r\n")

    @staticmethod
    def dotty_lines():
        """
        Lines starting with "." first, last, alone, doubled, and starting
        exactly at the 16384/65536-byte boundaries of both the CRLF and the LF
        form of the message (where a per-chunk stuffer would miss them).
        """
        lines = [b".first line", b"Subject: dots", b""]
        targets = [(16384, 2), (2 * 16384, 1), (65536, 2), (2 * 65536, 1),
                   (3 * 65536, 2), (3 * 65536 + 16384, 1)]

        def length(eol):
            return sum(len(line) + eol for line in lines)

        for target, eol in targets:
            # fill up to just before the boundary, then a dot line on it
            while target - length(eol) > 1000:
                lines.append(b"x" * 900 + b"\xe9")
            gap = target - length(eol) - eol
            assert gap >= 0
            lines.append(b"y" * gap)
            assert length(eol) == target
            lines += [b".", b"..", b".on the boundary", b"...", b". ."]
        lines += [b"last but one", b"."]
        return lines

    async def test_dot_stuffing_lf_and_crlf(self):
        relay = self.relay()
        t = self.transport(relay, connections=1)
        lines = self.dotty_lines()
        crlf = b"\r\n".join(lines) + b"\r\n"
        lf = b"\n".join(lines) + b"\n"
        lf_unterminated = b"\n".join(lines)  # last line "." without its newline
        results = await defer.gatherResults(
            [t.deliver(message(i, data=d)) for i, d in enumerate([crlf, lf, lf_unterminated])])
        self.assertEqual({r.outcome for r in results}, {Outcome.SENT})
        received = [m.data for m in relay.messages]
        self.assertEqual(len(received), 3)
        for data in received:
            self.assertTrue(data == crlf, "received data differs from the CRLF input")


class NoDelayTests(TransportTestCase):
    """
    The client's socket has TCP_NODELAY: a message longer than one segment
    must not have its last segment (the final dot and the next envelope)
    held back by Nagle's algorithm until the relay acknowledged the rest.
    """

    async def _connected(self, relay, tls_options=None) -> SMTPClientProtocol:
        proto = SMTPClientProtocol(reactor, "127.0.0.1", reply_timeout=5.0, data_timeout=5.0,
                                   implicit_tls=tls_options is not None)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", relay.port)
        if tls_options is not None:
            endpoint = wrapClientTLS(tls_options, endpoint)
        await connectProtocol(endpoint, proto)

        async def close():
            proto.transport.loseConnection()
            await proto.when_closed()

        self.addCleanup(lambda: defer.ensureDeferred(close()))
        return proto

    async def test_plain_connection(self):
        proto = await self._connected(self.relay())
        self.assertTrue(proto.transport.getTcpNoDelay())

    async def test_implicit_tls_connection(self):
        relay = self.tls_relay(implicit_tls=True)
        options = ssl.optionsForClientTLS(
            "127.0.0.1", trustRoot=load_trust_root(tls_files().ca_path))
        proto = await self._connected(relay, options)
        self.assertTrue(proto.transport.getTcpNoDelay())
