"""
Group commit of received messages: messages whose DATA ends while a store
is in flight are stored together in one transaction; each 250 comes only
after the commit that holds its message, and a failed commit answers
exactly its own messages 451.
"""

from __future__ import annotations

import smtplib

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from emaild.inbound.groupcommit import GroupCommit
from emaild.inbound.records import Received, Recipient
from emaild.inbound.server import InboundFactory
from emaild.inbound.store import RELAY
from tests.inbound.test_inbound_relay import REAL, RelayTestCase, mail


def post(n: int, size: int = 10) -> Received:
    return Received(peer="127.0.0.1", helo="client.test", tls=False, mail_from=f"m{n}@x.test",
                    recipients=(Recipient(f"r{n}@relay.test", RELAY),), raw=b"x" * size)


class FakeStore:
    """receive_many whose answers the test gives."""

    def __init__(self):
        self.calls: list[tuple[list[Received], defer.Deferred]] = []

    def receive_many(self, posts):
        d: defer.Deferred = defer.Deferred()
        self.calls.append((list(posts), d))
        return d


class GroupCommitTests(unittest.TestCase):
    def setUp(self):
        self.store = FakeStore()
        self.commit = GroupCommit(self.store, max_messages=3, max_octets=100)
        self.results: dict[int, object] = {}

    def receive(self, n, size=10):
        d = self.commit.receive(post(n, size))
        d.addBoth(lambda r: self.results.__setitem__(n, r))
        return d

    def test_a_lone_message_is_stored_at_once(self):
        self.receive(1)
        self.assertEqual([[p.mail_from for p in posts] for posts, _ in self.store.calls],
                         [["m1@x.test"]])
        self.assertNotIn(1, self.results)  # no answer before the commit
        self.store.calls[0][1].callback([41])
        self.assertEqual(self.results, {1: 41})

    def test_messages_arriving_during_a_commit_share_the_next_one(self):
        for n in range(1, 6):
            self.receive(n)
        self.assertEqual(len(self.store.calls), 1)
        self.store.calls[0][1].callback([101])
        # the next transaction: at most max_messages of those waiting
        self.assertEqual([p.mail_from for p in self.store.calls[1][0]],
                         ["m2@x.test", "m3@x.test", "m4@x.test"])
        self.assertEqual(self.results, {1: 101})
        self.store.calls[1][1].callback([102, 103, 104])
        self.assertEqual(self.results, {1: 101, 2: 102, 3: 103, 4: 104})
        self.store.calls[2][1].callback([105])
        self.assertEqual(self.results[5], 105)
        self.assertEqual((self.commit.transactions, self.commit.messages), (3, 5))

    def test_a_failed_commit_fails_exactly_its_messages(self):
        self.receive(1)
        self.receive(2)
        self.receive(3)
        self.store.calls[0][1].errback(RuntimeError("the database said no"))
        self.assertTrue(self.results[1].check(RuntimeError))
        self.assertNotIn(2, self.results)
        self.store.calls[1][1].callback([7, 8])
        self.assertEqual((self.results[2], self.results[3]), (7, 8))

    def test_a_refused_transaction_of_several_is_stored_again_one_by_one(self):
        import psycopg2
        self.receive(1)
        self.receive(2)
        self.receive(3)
        self.store.calls[0][1].callback([1])
        self.store.calls[1][1].errback(psycopg2.IntegrityError("post 3's group is gone"))
        self.assertEqual([[p.mail_from for p in posts] for posts, _ in self.store.calls[2:]],
                         [["m2@x.test"]])
        self.store.calls[2][1].callback([2])
        self.store.calls[3][1].errback(psycopg2.IntegrityError("post 3's group is gone"))
        self.assertEqual(self.results[2], 2)
        self.assertTrue(self.results[3].check(psycopg2.IntegrityError))
        self.assertEqual(len(self.store.calls), 4)

    def test_a_lost_connection_fails_the_whole_transaction(self):
        from emaild.db.database import DatabaseUnavailable
        self.receive(1)
        self.receive(2)
        self.receive(3)
        self.store.calls[0][1].callback([1])
        self.store.calls[1][1].errback(DatabaseUnavailable("gone"))
        self.assertTrue(self.results[2].check(DatabaseUnavailable))
        self.assertTrue(self.results[3].check(DatabaseUnavailable))
        self.assertEqual(len(self.store.calls), 2)

    def test_a_wrong_number_of_ids_fails_the_batch_rather_than_misnaming(self):
        self.receive(1)
        self.store.calls[0][1].callback([])
        self.assertTrue(self.results[1].check(RuntimeError))
        self.receive(2)  # and the next one is still stored
        self.assertEqual(len(self.store.calls), 2)

    def test_batches_are_bounded_in_octets_but_hold_at_least_one(self):
        self.receive(1)
        self.receive(2, size=60)
        self.receive(3, size=60)
        self.receive(4, size=500)
        self.store.calls[0][1].callback([1])
        self.assertEqual([p.mail_from for p in self.store.calls[1][0]], ["m2@x.test"])
        self.store.calls[1][1].callback([2])
        self.assertEqual([p.mail_from for p in self.store.calls[2][0]], ["m3@x.test"])
        self.store.calls[2][1].callback([3])
        self.assertEqual([p.mail_from for p in self.store.calls[3][0]], ["m4@x.test"])

    def test_a_message_received_from_inside_an_answer_waits_for_its_own_commit(self):
        # a pipelining client's next message arrives when its 250 is sent
        self.commit.receive(post(1)).addCallback(lambda _: self.receive(2))
        self.store.calls[0][1].callback([1])
        self.assertEqual([p.mail_from for p in self.store.calls[1][0]], ["m2@x.test"])
        self.assertNotIn(2, self.results)


def _send(port: int, mail_from: str, rcpt: str, data: bytes):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mx.example.net")
        client.mail(mail_from)
        client.rcpt(rcpt)
        try:
            return client.data(data)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error


class TurnBatchingTests(unittest.TestCase):
    """Given the reactor, the messages of one reactor turn share the first commit."""

    def test_one_turns_messages_share_a_commit(self):
        from twisted.internet.task import Clock

        clock, store = Clock(), FakeStore()
        commit = GroupCommit(store, reactor=clock)
        results: dict[int, object] = {}
        for n in (1, 2, 3):
            commit.receive(post(n)).addBoth(lambda r, n=n: results.__setitem__(n, r))
        self.assertEqual(store.calls, [])  # not before the turn ends
        clock.advance(0)
        self.assertEqual([[p.mail_from for p in posts] for posts, _ in store.calls],
                         [["m1@x.test", "m2@x.test", "m3@x.test"]])
        self.assertEqual(results, {})  # no answer before the commit
        store.calls[0][1].callback([11, 12, 13])
        self.assertEqual(results, {1: 11, 2: 12, 3: 13})
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_the_daemons_handler_commits_by_reactor_turn(self):
        from emaild.homeserver import HomeServer
        from tests.support import make_config

        hs = HomeServer(make_config(self.mktemp(), "dbname=unused"), reactor)
        self.assertIs(hs.get_inbound_handler().posts.batches.reactor, reactor)


class StoreTests(RelayTestCase):
    def setUp(self):
        d = super().setUp()
        d.addCallback(lambda _: self._listen())
        return d

    def _listen(self):
        factory = InboundFactory(self.handler, hostname="mx.relay.test", reactor=reactor,
                                 max_sessions_per_client=50)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.port = port.getHost().port

    @defer.inlineCallbacks
    def test_receive_many_stores_each_message_with_its_own_recipients(self):
        posts = [Received(peer=f"192.0.2.{n}", helo=f"h{n}.test", tls=bool(n % 2),
                          mail_from=f"m{n}@x.test", raw=f"Subject: {n}\r\n\r\nbody {n}\r\n".encode(),
                          authentication=f"auth {n}",
                          recipients=tuple(Recipient(f"r{n}.{k}@relay.test", RELAY, group_id=None,
                                                     person_id=self.ids["ada"])
                                           for k in range(n)))
                 for n in (1, 3, 2)]
        ids = yield self.inbound.receive_many(posts)
        self.assertEqual(len(set(ids)), 3)
        for message_id, p in zip(ids, posts):
            row = self.query("SELECT peer, helo, tls, mail_from, size, raw, authentication"
                             " FROM inbound_messages WHERE id = %s", (message_id,))[0]
            self.assertEqual(row[:5] + (bytes(row[5]), row[6]),
                             (p.peer, p.helo, p.tls, p.mail_from, len(p.raw), p.raw,
                              p.authentication))
            rcpts = self.query("SELECT address, purpose, person_id FROM inbound_recipients"
                               " WHERE message_id = %s ORDER BY id", (message_id,))
            self.assertEqual(rcpts, [(r.address, RELAY, self.ids["ada"]) for r in p.recipients])

    async def test_one_refused_post_does_not_take_its_transaction_with_it(self):
        commit = GroupCommit(self.inbound)

        def one(n, group_id=None):
            return commit.receive(Received(
                peer="192.0.2.1", helo="h.test", tls=False, mail_from=f"m{n}@x.test",
                raw=b"Subject: x\r\n\r\nbody\r\n", recipients=(Recipient(
                    f"r{n}@relay.test", RELAY, group_id=group_id, person_id=self.ids["ada"]),)))

        first = one(1)  # in flight: the next three share a transaction
        waiting = [one(2), one(3, group_id=10**9), one(4)]  # 3: no such group
        results = await defer.DeferredList([first, *waiting], consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True, True, False, True])
        self.assertEqual(self.query("SELECT mail_from FROM inbound_messages ORDER BY id"),
                         [("m1@x.test",), ("m2@x.test",), ("m4@x.test",)])
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_concurrent_sessions_share_commits_and_every_250_is_committed(self):
        n = 30
        body = mail("Ada <ada@example.org>", self.reply["ada"], "hello", "hi")
        replies = yield defer.gatherResults([
            threads.deferToThread(_send, self.port, REAL[0], self.reply["ada"], body)
            for _ in range(n)])
        self.assertEqual([code for code, _ in replies], [250] * n)
        ids = [int(text.rsplit(b" ", 1)[1]) for _, text in replies]
        self.assertEqual(len(set(ids)), n)
        stored = self.query("SELECT m.id, count(r.id) FROM inbound_messages m"
                            " JOIN inbound_recipients r ON r.message_id = m.id GROUP BY m.id")
        self.assertEqual(sorted(stored), sorted((i, 1) for i in ids))
        self.assertEqual(self.handler.posts.messages, n)
        self.assertLessEqual(self.handler.posts.transactions, n)
        self.assertEqual(self.handler.members.tokens, n)
