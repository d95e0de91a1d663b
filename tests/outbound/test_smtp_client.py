"""
Unit tests of the SMTP client protocol's message flow, over a
StringTransport with a Clock: what goes out in which group, how many
replies are awaited at once, and which message each reply is counted for.
The same behaviour against real relays is in test_smtp_transport.py and
test_smtp_pipelining.py.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from emaild.outbound.smtp import SMTPTransport
from emaild.outbound.smtpclient import SMTPClientProtocol
from emaild.outbound.transport import Outcome, OutgoingMessage


def message(n: int, recipient: str = "alice@example.org") -> OutgoingMessage:
    return OutgoingMessage(n, f"b{n}@relay.example", recipient, b"Subject: %d\n\nbody\n" % n)


def data_of(n: int) -> bytes:
    return b"Subject: %d\r\n\r\nbody\r\n.\r\n" % n


def envelope(n: int, recipient: bytes = b"alice@example.org") -> bytes:
    return b"MAIL FROM:<b%d@relay.example>\r\nRCPT TO:<%s>\r\nDATA\r\n" % (n, recipient)


class Session:
    """A protocol set up against a scripted relay, and what it reported."""

    def __init__(self, pipelining: bool = True):
        self.clock = Clock()
        self.proto = SMTPClientProtocol(self.clock, "relay.test", reply_timeout=5.0,
                                        data_timeout=10.0)
        self.wire = StringTransport()
        self.proto.makeConnection(self.wire)
        self.results: dict[int, object] = {}
        self.ready = 0
        self.queue: list[OutgoingMessage] = []
        self.proto.on_ready = self._ready
        started = Deferred.fromCoroutine(
            self.proto.start(b"client.test", None, None, None))
        self.reply(b"220 relay.test ESMTP")
        assert self.take() == b"EHLO client.test\r\n"
        self.reply(b"250-relay.test", b"250-8BITMIME",
                   *([b"250 PIPELINING"] if pipelining else [b"250 HELP"]))
        assert started.called
        assert self.proto.accepting

    def _ready(self):
        self.ready += 1
        if self.queue and self.proto.accepting:
            self.send(self.queue.pop(0))

    def send(self, m: OutgoingMessage):
        self.proto.send(m, lambda result, n=m.id: self.results.__setitem__(n, result))

    def reply(self, *lines: bytes):
        self.proto.dataReceived(b"".join(line + b"\r\n" for line in lines))

    def take(self) -> bytes:
        out = self.wire.value()
        self.wire.clear()
        return out


class PipeliningTests(TestCase):
    def test_one_round_trip_per_message(self):
        s = Session()
        s.queue = [message(2), message(3)]
        s.send(message(1))
        self.assertEqual(s.take(), envelope(1))  # MAIL, RCPT, DATA in one group
        self.assertEqual(s.proto.awaiting, 3)
        s.reply(b"250 ok", b"250 ok", b"354 go")
        # message 1's data and dot, then message 2's envelope, before any reply
        self.assertEqual(s.take(), data_of(1) + envelope(2))
        self.assertEqual(s.proto.awaiting, 4)
        self.assertEqual(s.results, {})
        s.reply(b"250 queued 1", b"250 ok", b"250 ok", b"354 go")
        self.assertEqual(s.results[1].outcome, Outcome.SENT)
        self.assertEqual(s.results[1].reply, "queued 1")
        self.assertEqual(s.take(), data_of(2) + envelope(3))
        s.reply(b"250 queued 2", b"250 ok", b"250 ok", b"354 go")
        self.assertEqual(s.take(), data_of(3))
        self.assertEqual(s.proto.awaiting, 1)
        s.reply(b"250 queued 3")
        self.assertEqual([s.results[i].outcome for i in (1, 2, 3)], [Outcome.SENT] * 3)
        self.assertEqual(s.proto.awaiting, 0)
        self.assertTrue(s.proto.drained().called)

    def test_data_and_next_envelope_leave_in_one_write(self):
        # one transport write (one socket send) per message, not one for the
        # data and another for the next envelope
        s = Session()
        writes = []
        write = s.wire.write
        s.wire.write = lambda data: (writes.append(data), write(data))
        s.queue = [message(2)]
        s.send(message(1))
        s.reply(b"250 ok", b"250 ok", b"354 go")
        self.assertEqual(writes[1:], [data_of(1) + envelope(2)])
        self.assertEqual(s.take(), envelope(1) + data_of(1) + envelope(2))

    def test_one_reply_timer_for_the_whole_session(self):
        # the timer is reset from reply to reply, not dropped and scheduled
        # again for every message
        s = Session()
        s.queue = [message(i) for i in range(2, 6)]
        s.send(message(1))
        (timer,) = s.clock.getDelayedCalls()
        for n in range(1, 5):
            s.reply(b"250 queued %d" % n, b"250 ok", b"250 ok", b"354 go")
            self.assertEqual(s.clock.getDelayedCalls(), [timer])
        s.clock.advance(9)
        s.reply(b"250 queued 5")
        self.assertEqual(len(s.results), 5)
        self.assertEqual(s.clock.getDelayedCalls(), [])

    def test_never_more_than_one_group_in_flight(self):
        s = Session()
        s.queue = [message(i) for i in range(2, 30)]
        s.send(message(1))
        most = 0
        replies = [b"250 ok", b"250 ok", b"354 go"]
        while True:
            s.take()
            most = max(most, s.proto.awaiting)
            if not s.proto.awaiting:
                break
            # answer exactly what was asked, one reply at a time
            for _ in range(s.proto.awaiting):
                if not replies:
                    replies = [b"250 done", b"250 ok", b"250 ok", b"354 go"]
                s.reply(replies.pop(0))
                most = max(most, s.proto.awaiting)
                if s.wire.value():
                    break
        self.assertEqual(most, 4)  # end of data + MAIL, RCPT, DATA
        self.assertEqual(len(s.results), 29)
        self.assertEqual({r.outcome for r in s.results.values()}, {Outcome.SENT})

    def test_refused_recipient_behind_pending_data(self):
        s = Session()
        s.queue = [message(2, "bob@example.org"), message(3)]
        s.send(message(1))
        s.take()
        s.reply(b"250 ok", b"250 ok", b"354 go")
        self.assertEqual(s.take(), data_of(1) + envelope(2, b"bob@example.org"))
        # message 1's end of data is accepted; message 2's RCPT refused, so
        # its DATA is refused too
        s.reply(b"250 queued 1", b"250 ok", b"550 5.1.1 no such user", b"554 no valid recipients")
        self.assertEqual(s.results[1].outcome, Outcome.SENT)
        self.assertEqual((s.results[2].outcome, s.results[2].code), (Outcome.FAILED, 550))
        self.assertEqual(s.results[2].reply, "RCPT TO: 550 5.1.1 no such user")
        self.assertEqual(s.take(), b"RSET\r\n")
        s.reply(b"250 reset")
        self.assertEqual(s.take(), envelope(3))

    def test_end_of_data_refused_while_next_envelope_pending(self):
        s = Session()
        s.queue = [message(2)]
        s.send(message(1))
        s.take()
        s.reply(b"250 ok", b"250 ok", b"354 go")
        s.take()
        s.reply(b"451 4.3.0 try later", b"250 ok", b"250 ok", b"354 go")
        self.assertEqual((s.results[1].outcome, s.results[1].code), (Outcome.RETRY, 451))
        self.assertNotIn(2, s.results)
        self.assertEqual(s.take(), data_of(2))
        s.reply(b"454 Throttling failure: Maximum sending rate exceeded.")
        self.assertEqual(s.results[2].outcome, Outcome.THROTTLED)

    def test_pipelined_data_accepted_after_refused_rcpt(self):
        # A relay that says 354 although no recipient was accepted gets an
        # empty message, which it must refuse; the message is not sent.
        s = Session()
        s.send(message(1, "bob@example.org"))
        s.take()
        s.reply(b"250 ok", b"550 no such user", b"354 go")
        self.assertEqual(s.take(), b".\r\n")
        s.reply(b"554 no valid recipients")
        self.assertEqual(s.results[1].outcome, Outcome.FAILED)
        self.assertEqual(s.results[1].reply, "RCPT TO: 550 no such user")
        self.assertEqual(s.take(), b"RSET\r\n")
        s.reply(b"250 ok")
        self.assertTrue(s.proto.accepting)

    def test_connection_lost_mid_pipeline(self):
        s = Session()
        s.queue = [message(2)]
        s.send(message(1))
        s.take()
        s.reply(b"250 ok", b"250 ok", b"354 go")
        s.take()
        s.reply(b"250 queued 1", b"250 ok")  # message 2's RCPT and DATA unanswered
        s.proto.connectionLost(Failure(ConnectionLost("gone")))
        self.assertEqual(s.results[1].outcome, Outcome.SENT)
        self.assertEqual(s.results[2].outcome, Outcome.RETRY)
        self.assertIn("connection lost during RCPT TO", s.results[2].reply)
        self.assertFalse(s.proto.accepting)

    def test_connection_lost_before_end_of_data_reply(self):
        # the data and dot went out, the reply did not come: never SENT
        s = Session()
        s.queue = [message(2)]
        s.send(message(1))
        s.take()
        s.reply(b"250 ok", b"250 ok", b"354 go")
        s.proto.connectionLost(Failure(ConnectionLost("gone")))
        self.assertEqual(s.results[1].outcome, Outcome.RETRY)
        self.assertIn("connection lost during DATA (end of message)", s.results[1].reply)
        self.assertEqual(s.results[2].outcome, Outcome.RETRY)

    def test_end_of_data_timeout(self):
        s = Session()
        s.send(message(1))
        s.take()
        s.reply(b"250 ok", b"250 ok", b"354 go")
        s.clock.advance(9.9)
        self.assertFalse(s.wire.disconnecting)
        s.clock.advance(0.2)  # data_timeout is 10 s
        self.assertTrue(s.wire.disconnecting or s.wire.disconnected)
        s.proto.connectionLost(Failure(ConnectionLost("aborted")))
        self.assertEqual(s.results[1].outcome, Outcome.RETRY)
        self.assertIn("timed out after 10s waiting for the reply to DATA", s.results[1].reply)

    def test_each_reply_gets_its_own_timeout(self):
        s = Session()
        s.send(message(1))
        s.take()
        for line in (b"250 ok", b"250 ok"):
            s.clock.advance(4.0)
            s.reply(line)
        s.clock.advance(4.0)  # 12 s since the group, 4 s since the last reply
        self.assertFalse(s.wire.disconnecting)
        s.clock.advance(1.1)
        self.assertTrue(s.wire.disconnecting or s.wire.disconnected)

    def test_421_ends_the_session(self):
        s = Session()
        s.queue = [message(2)]
        s.send(message(1))
        s.take()
        s.reply(b"250 ok", b"250 ok", b"354 go")
        s.take()
        s.reply(b"421 4.4.2 closing")
        self.assertEqual((s.results[1].outcome, s.results[1].code), (Outcome.RETRY, 421))
        self.assertTrue(s.proto.broken)
        s.proto.connectionLost(Failure(ConnectionLost("closed")))
        self.assertEqual(s.results[2].outcome, Outcome.RETRY)


class LockStepTests(TestCase):
    def test_one_command_at_a_time(self):
        s = Session(pipelining=False)
        s.queue = [message(2)]
        s.send(message(1))
        self.assertEqual(s.take(), b"MAIL FROM:<b1@relay.example>\r\n")
        self.assertEqual(s.proto.awaiting, 1)
        s.reply(b"250 ok")
        self.assertEqual(s.take(), b"RCPT TO:<alice@example.org>\r\n")
        s.reply(b"250 ok")
        self.assertEqual(s.take(), b"DATA\r\n")
        s.reply(b"354 go")
        self.assertEqual(s.take(), data_of(1))  # and nothing of message 2 yet
        self.assertEqual(s.ready, 0)
        s.reply(b"250 queued")
        self.assertEqual(s.results[1].outcome, Outcome.SENT)
        self.assertEqual(s.ready, 1)
        self.assertEqual(s.take(), b"MAIL FROM:<b2@relay.example>\r\n")

    def test_refused_sender_resets(self):
        s = Session(pipelining=False)
        s.send(message(1))
        s.take()
        s.reply(b"553 bad sender")
        self.assertEqual(s.take(), b"RSET\r\n")  # no RCPT, no DATA
        self.assertEqual(s.results[1].outcome, Outcome.FAILED)
        self.assertEqual(s.results[1].reply, "MAIL FROM: 553 bad sender")
        s.reply(b"250 ok")
        self.assertEqual(s.ready, 1)

    def test_control_bytes_in_a_reply_never_reach_the_store(self):
        # PostgreSQL refuses NUL in text: the result could never be recorded
        # and the message would be retried for ever; other control bytes
        # would forge log lines
        s = Session(pipelining=False)
        s.send(message(1))
        s.take()
        s.reply(b"250 ok")
        s.take()
        s.reply(b"250 ok")
        s.take()
        s.reply(b"354 go")
        s.take()
        s.reply(b"250-queued\x00 as\x1b[2J", b"250 id\rfake: line\x7f")
        self.assertEqual(s.results[1].outcome, Outcome.SENT)
        self.assertEqual(s.results[1].reply, "queued? as?[2J\nid?fake: line?")

    def test_garbled_reply_drops_the_session(self):
        s = Session(pipelining=False)
        s.send(message(1))
        s.take()
        s.reply(b"hello?")
        self.assertTrue(s.wire.disconnecting or s.wire.disconnected)
        s.proto.connectionLost(Failure(ConnectionLost("aborted")))
        self.assertEqual(s.results[1].outcome, Outcome.RETRY)
        self.assertIn("garbled reply during MAIL FROM", s.results[1].reply)


class PoolTests(TestCase):
    """
    The transport's pool on a MemoryReactorClock: connecting through the
    endpoint, the connect timeout and abort by cancelling, and messages
    handed to one connection back to back.
    """

    def transport(self, **kw) -> tuple[MemoryReactorClock, SMTPTransport]:
        reactor = MemoryReactorClock()
        kw.setdefault("connect_timeout", 5.0)
        return reactor, SMTPTransport(reactor, "127.0.0.1", 2525, tls="none",
                                      helo_name="client.test", **kw)

    def test_connect_timeout_cancels_the_attempt(self):
        reactor, t = self.transport()
        results = []
        t.deliver(message(1)).addCallback(results.append)
        reactor.advance(0)
        self.assertEqual([c[:2] for c in reactor.tcpClients], [("127.0.0.1", 2525)])
        reactor.advance(4.9)
        self.assertEqual(results, [])
        reactor.advance(0.2)
        self.assertEqual(results[0].outcome, Outcome.RETRY)
        self.assertEqual(results[0].reply, "timed out after 5s connecting to 127.0.0.1:2525")
        self.assertEqual(t.capacity(), 4)  # the slot is free again

    def test_abort_while_connecting(self):
        reactor, t = self.transport()
        results = []
        t.deliver(message(1)).addCallback(results.append)
        reactor.advance(0.1)
        t.abort()
        self.assertEqual(results[0].reply, "transport aborted while connecting to 127.0.0.1:2525")
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_messages_follow_each_other_on_one_connection(self):
        reactor, t = self.transport(connections=1)
        results = {}
        for i in (1, 2, 3):
            t.deliver(message(i)).addCallback(lambda r, i=i: results.__setitem__(i, r))
        reactor.advance(0)
        factory = reactor.tcpClients[0][2]
        wire = StringTransport()
        protocol = factory.buildProtocol(None)  # the endpoint's wrapper around ours
        protocol.makeConnection(wire)

        def server(*lines):
            protocol.dataReceived(b"".join(line + b"\r\n" for line in lines))
            out = wire.value()
            wire.clear()
            return out

        self.assertEqual(server(b"220 relay"), b"EHLO client.test\r\n")
        self.assertEqual(server(b"250-relay", b"250 PIPELINING"), envelope(1))
        self.assertEqual(server(b"250 ok", b"250 ok", b"354 go"), data_of(1) + envelope(2))
        self.assertEqual(server(b"250 one", b"250 ok", b"250 ok", b"354 go"),
                         data_of(2) + envelope(3))
        self.assertEqual(server(b"250 two", b"250 ok", b"250 ok", b"354 go"), data_of(3))
        self.assertEqual(server(b"250 three"), b"")  # idle: nothing more to send
        self.assertEqual([results[i].reply for i in (1, 2, 3)], ["one", "two", "three"])
        closed = t.close()
        self.assertEqual(wire.value(), b"QUIT\r\n")
        server(b"221 bye")
        self.assertTrue(wire.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(closed.called)
