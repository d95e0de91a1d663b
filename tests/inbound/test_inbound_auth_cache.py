"""
What sender authentication remembers between posts: SPF results and DMARC
policies for exactly as long as the DNS answers they were made from (a
changed record is seen when its TTL is over, a temporary failure is never
remembered), DKIM verified for every message, and the From addresses read
as the relay reads them.
"""

from __future__ import annotations

import random
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import getaddresses

from twisted.internet import defer, reactor
from twisted.trial import unittest

from emaild.inbound.auth.dkim import may_be_signed
from emaild.inbound.auth.dns import Recording, Resolver, ResultCache, TemporaryDNSError
from emaild.inbound.auth.policy import from_addresses
from emaild.inbound.auth.verdict import Authenticator
from tests.dkimsign import sign
from tests.dnsserver import ZoneServer, txt
from tests.inbound.test_inbound_auth import KEY, message, zone_records


class ShiftedClock:
    """The real reactor, whose clock the test can move forward."""

    def __init__(self):
        self.offset = 0.0

    def seconds(self) -> float:
        return reactor.seconds() + self.offset

    def __getattr__(self, name):
        return getattr(reactor, name)


class RememberedVerdictTests(unittest.TestCase):
    def setUp(self):
        self.server = ZoneServer("test", zone_records())
        self.zone = self.server.authorities[0]
        port = self.server.start()
        self.addCleanup(self.server.stop)
        self.clock = ShiftedClock()
        self.resolver = Resolver(self.clock, [("127.0.0.1", port)], timeout=2)
        self.addCleanup(self.resolver.close)
        self.authenticator = Authenticator(self.resolver)

    def authenticate(self, raw=None, sender="ada@mail.org.test"):
        raw = raw if raw is not None else message(sender)
        return defer.Deferred.fromCoroutine(self.authenticator.authenticate(
            peer="127.0.0.1", helo="helo.test", mail_from=sender, raw=raw,
            from_domain=sender.rpartition("@")[2]))

    @defer.inlineCallbacks
    def test_a_repeated_post_asks_nobody_until_the_answers_expire(self):
        first = yield self.authenticate()
        self.assertEqual((first.spf.result, first.dmarc.result), ("pass", "pass"))
        asked = len(self.server.queries)
        again = yield self.authenticate()
        self.assertEqual(again, first)
        self.assertEqual(len(self.server.queries), asked)
        # the sender's domain stops vouching: seen once the TTL (300 s) is over
        self.zone.records[b"mail.org.test"] = [txt("v=spf1 -all")]
        within = yield self.authenticate()
        self.assertEqual(within.spf.result, "pass")
        self.clock.offset += 301
        after = yield self.authenticate()
        self.assertEqual((after.spf.result, after.dmarc.result), ("fail", "fail"))
        self.assertGreater(len(self.server.queries), asked)

    @defer.inlineCallbacks
    def test_a_changed_dmarc_policy_is_seen_when_its_ttl_is_over(self):
        first = yield self.authenticate()
        self.assertEqual(first.dmarc.policy, "reject")  # sp= of org.test's record
        self.zone.records[b"_dmarc.org.test"] = [txt("v=DMARC1; p=none")]
        within = yield self.authenticate()
        self.assertEqual(within.dmarc.policy, "reject")
        self.clock.offset += 301
        after = yield self.authenticate()
        self.assertEqual(after.dmarc.policy, "none")

    @defer.inlineCallbacks
    def test_a_temporary_failure_is_not_remembered(self):
        self.zone.servfail.add("mail.org.test")
        failed = yield self.authenticate()
        self.assertEqual(failed.spf.result, "temperror")
        self.assertTrue(failed.temporary)
        self.zone.servfail.clear()
        self.flushLoggedErrors(RuntimeError)  # the test server's SERVFAIL
        recovered = yield self.authenticate()  # at once: nothing waits for a TTL
        self.assertEqual(recovered.spf.result, "pass")

    @defer.inlineCallbacks
    def test_dkim_is_verified_for_every_message(self):
        signed = sign(message("bob@dkim.test"), domain="dkim.test", selector="sel", key=KEY)
        good = yield self.authenticate(signed, "bob@dkim.test")
        self.assertEqual([s.result for s in good.dkim], ["pass"])
        self.assertEqual(good.dmarc.result, "pass")
        tampered = signed.replace(b"Hello.", b"Pay me.")
        bad = yield self.authenticate(tampered, "bob@dkim.test")
        self.assertEqual([s.result for s in bad.dkim], ["fail"])
        self.assertEqual(bad.dmarc.result, "fail")


class PiecesTests(unittest.TestCase):
    def test_recording_keeps_the_earliest_expiry_and_forgets_failures(self):
        class Fake:
            reactor = reactor

            def __init__(self):
                self.answers = {"a": (reactor.seconds() + 50, ("x",)),
                                "b": (reactor.seconds() + 10, ("y",))}

            async def lookup_until(self, name, qtype):
                if name == "bad":
                    raise TemporaryDNSError("no")
                return self.answers[name]

        recording = Recording(Fake())

        async def use():
            await recording.lookup("a", "TXT")
            await recording.lookup("b", "TXT")
            earliest = recording.expires
            try:
                await recording.lookup("bad", "TXT")
            except TemporaryDNSError:
                pass
            return earliest

        earliest = self.successResultOf(defer.Deferred.fromCoroutine(use()))
        self.assertLess(abs(earliest - (reactor.seconds() + 10)), 1)
        self.assertEqual(recording.expires, float("-inf"))

    def test_result_cache_keeps_nothing_past_its_expiry(self):
        clock = ShiftedClock()
        cache = ResultCache(clock, size=2)
        cache.put("gone", clock.seconds() - 1, "x")
        self.assertIsNone(cache.get("gone"))
        cache.put("k", clock.seconds() + 5, "v")
        self.assertEqual(cache.get("k"), "v")
        clock.offset += 6
        self.assertIsNone(cache.get("k"))
        for key in "abc":
            cache.put(key, clock.seconds() + 5, key)
        self.assertEqual([cache.get(k) for k in "abc"], [None, "b", "c"])

    def test_may_be_signed(self):
        self.assertFalse(may_be_signed(message("a@b.test")))
        self.assertTrue(may_be_signed(b"dkim-SIGNATURE: v=1\r\n" + message("a@b.test")))
        self.assertTrue(may_be_signed(b"X: y\r\nDKIM-Signature:v=1\r\n\r\n"))
        # the name not at a line start: not a header field
        self.assertFalse(may_be_signed(b"X: dkim-signature\r\n\r\nsee DKIM-Signature\r\n"))
        self.assertTrue(may_be_signed(b"X: dkim-signature\r\nDkIm-SiGnAtUrE: v=1\r\n\r\n"))
        self.assertTrue(may_be_signed(b"X: y\nDKIM-SIGNATURE: v=1\n\n"))

    def test_from_addresses_read_as_a_full_parse_reads_them(self):
        def full(raw):
            try:
                headers = BytesHeaderParser(policy=default_policy).parsebytes(raw)
                values = headers.get_all("From") or []
                return [a.lower() for _, a in getaddresses([str(v) for v in values]) if a]
            except Exception:
                return []

        pieces = [b"From: ", b"from:", b"FROM :", b"To: ", b"\r\n", b"\n", b"\r", b" ", b"\t",
                  b"a@b", b"<c@d>", b",", b'"', b"=?utf-8?q?x=40y?=", b"(", b")", b"\xc3\xa9",
                  b"\xff", b":", b";", b"@", b"Received: x"]
        rng = random.Random(7)
        cases = [b"From: A <a@x.org>\r\nTo: b\r\n\r\nbody\r\nFrom: c@d\r\n",
                 b"From: a@x.org,\r\n b@y.org\r\nFrom: c@z\r\n\r\n",
                 b"Subject: x\rFrom: a@b\r\rFrom: c@d\r", b"X: y\r\n\rFrom: a@b\r\n",
                 b"not a header\r\nFrom: a@b\r\n\r\n", b"From: Group: a@b, c@d;\r\n\r\n"]
        cases += [b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
                  for _ in range(3000)]
        for raw in cases:
            self.assertEqual(from_addresses(raw), full(raw), raw)


class VerdictLogTests(unittest.TestCase):
    """A relayed post's verdict is stored, not logged; every other decision is logged."""

    def check(self, dmarc_result: str, aligned: bool):
        from twisted.logger import globalLogPublisher

        from emaild.inbound.auth.dmarc import DMARCResult
        from emaild.inbound.auth.policy import SenderAuthentication
        from emaild.inbound.auth.spf import SPFResult
        from emaild.inbound.auth.verdict import Verdict
        from emaild.inbound.interfaces import Envelope
        from emaild.inbound.records import Recipient
        from emaild.inbound.store import RELAY

        verdict = Verdict("x.test", SPFResult("pass" if aligned else "fail", "x.test", "mailfrom"),
                          None, (), DMARCResult(dmarc_result, "x.test", "reject", aligned),
                          "ada@x.test")

        class Fixed:
            async def authenticate(self, **kw):
                return verdict

        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        auth = SenderAuthentication(Fixed(), None, "hold", "relay.test")
        envelope = Envelope(peer="192.0.2.1", helo="h.test", mail_from="ada@x.test",
                            recipients=(Recipient("r@relay.test", RELAY,
                                                  member_email="ada@x.test"),), tls=False, size=1)
        d = defer.Deferred.fromCoroutine(auth.check(envelope, message("ada@x.test")))
        lines = [e for e in events if "sender authentication" in e.get("log_format", "")]
        return d, lines

    def test_relayed_is_not_logged(self):
        d, lines = self.check("pass", True)
        self.assertFalse(self.successResultOf(d).hold)
        self.assertEqual(lines, [])

    def test_refused_is_logged(self):
        from emaild.inbound.interfaces import Refused
        d, lines = self.check("fail", False)
        self.failureResultOf(d, Refused)
        self.assertEqual([e["decision"] for e in lines], ["refuse"])


class PublicSuffixListTests(unittest.TestCase):
    def test_the_list_is_read_when_the_authenticator_is_built(self):
        # reading it takes about 0.1 s of CPU: not during the first post
        from emaild.inbound.auth.dmarc import organizational_domain, public_suffixes

        public_suffixes.cache_clear()
        organizational_domain.cache_clear()

        class NoResolver:
            reactor = reactor

        Authenticator(NoResolver())
        self.assertEqual(public_suffixes.cache_info().currsize, 1)
        self.assertEqual(organizational_domain("mail.example.co.uk"), "example.co.uk")
        self.assertEqual(public_suffixes.cache_info().misses, 1)
