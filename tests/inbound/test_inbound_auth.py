"""
SPF, DKIM and DMARC of received posts, against a real authoritative DNS
server on loopback (tests/dnsserver.py) through emaild's non-blocking
resolver; DKIM signatures made by the tests' own RFC 6376 signer
(tests/dkimsign.py), not by dkimpy that verifies them.
"""

from __future__ import annotations

from email.utils import formatdate

from twisted.internet import defer, reactor
from twisted.names import dns
from twisted.trial import unittest

from emaild.config import ConfigError, load_config
from emaild.inbound.auth import dmarc
from emaild.inbound.auth.dkim import verify_all
from emaild.inbound.auth.dns import Resolver, TemporaryDNSError, system_servers
from emaild.inbound.auth.spf import SPFResult, check_helo, check_host
from emaild.inbound.auth.verdict import (
    HOLD,
    REFUSE,
    RELAY,
    RETRY,
    Authenticator,
    Verdict,
    decide,
)
from tests.dkimsign import key_record, new_key, sign
from tests.dnsserver import SilentServer, ZoneServer, txt

KEY = new_key()
OTHER_KEY = new_key()


def zone_records() -> dict[str, list]:
    return {
        "spf.test": [txt("v=spf1 ip4:127.0.0.1 -all")],
        "include.test": [txt("v=spf1 include:spf.test -all")],
        "redirect.test": [txt("v=spf1 redirect=spf.test")],
        "fail.test": [txt("v=spf1 ip4:192.0.2.1 -all")],
        "soft.test": [txt("v=spf1 ~all")],
        "mx.test": [txt("v=spf1 mx -all"), dns.Record_MX(10, b"mail.mx.test", ttl=300)],
        "mail.mx.test": [dns.Record_A("127.0.0.1", ttl=300)],
        "helo.test": [txt("v=spf1 a -all"), dns.Record_A("127.0.0.1", ttl=300)],
        "dkim.test": [txt("v=spf1 ip4:192.0.2.1 -all")],
        "sel._domainkey.dkim.test": [txt(key_record(KEY))],
        "_dmarc.dkim.test": [txt("v=DMARC1; p=reject; rua=mailto:d@dkim.test")],
        "_dmarc.org.test": [txt("v=DMARC1; p=quarantine; sp=reject")],
        "mail.org.test": [txt("v=spf1 ip4:127.0.0.1 -all")],
        "_dmarc.strict.test": [txt("v=DMARC1; p=reject; aspf=s; adkim=s")],
        "mail.strict.test": [txt("v=spf1 ip4:127.0.0.1 -all")],
        "_dmarc.none.test": [txt("v=DMARC1; p=none")],
        "twice.test": [txt("v=spf1 -all")],
        "big.test": [txt("v=DKIM1; p=" + "A" * 1400)],
        "_dmarc.twice.test": [txt("v=DMARC1; p=reject"), txt("v=DMARC1; p=none")],
    }


def message(sender: str, body: str = "Hello.\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: group@relay.test\r\nSubject: a post\r\n"
            f"Date: {formatdate(usegmt=True)}\r\nMessage-ID: <1@x.test>\r\n\r\n{body}").encode()


class AuthTestCase(unittest.TestCase):
    def setUp(self):
        self.server = ZoneServer("test", zone_records())
        port = self.server.start()
        self.addCleanup(self.server.stop)
        self.resolver = Resolver(reactor, [("127.0.0.1", port)], timeout=2)
        self.addCleanup(self.resolver.close)

    def spf(self, sender, ip="127.0.0.1", helo="mx.sender.test"):
        return defer.Deferred.fromCoroutine(check_host(self.resolver, ip, sender, helo))


class ResolverTests(AuthTestCase):
    @defer.inlineCallbacks
    def test_answers_are_cached_for_their_ttl_also_when_empty(self):
        first = yield defer.Deferred.fromCoroutine(self.resolver.lookup("spf.test", "TXT"))
        self.assertEqual(first, ((b"v=spf1 ip4:127.0.0.1 -all",),))
        again = yield defer.Deferred.fromCoroutine(self.resolver.lookup("SPF.test.", "TXT"))
        self.assertEqual(again, first)
        missing = yield defer.Deferred.fromCoroutine(self.resolver.lookup("nx.test", "TXT"))
        self.assertEqual(missing, ())
        yield defer.Deferred.fromCoroutine(self.resolver.lookup("nx.test", "TXT"))
        self.assertEqual(self.server.queries.count(("spf.test", dns.TXT)), 1)
        self.assertEqual(self.server.queries.count(("nx.test", dns.TXT)), 1)
        self.assertEqual(self.resolver.queries, 2)

    @defer.inlineCallbacks
    def test_names_that_cannot_exist_are_answered_empty_without_asking(self):
        for name in ("", "a..test", "[127.0.0.1]", "x" * 64 + ".test", "a b.test",
                     "a.test\x00", "_dmarc.\u2603" * 50):
            answer = yield defer.Deferred.fromCoroutine(self.resolver.lookup(name, "TXT"))
            self.assertEqual(answer, (), name)
        self.assertEqual(self.server.queries, [])
        # an internationalised name is asked in its ASCII form
        yield defer.Deferred.fromCoroutine(self.resolver.lookup("b\u00fccher.test", "TXT"))
        self.assertEqual(self.server.queries, [("xn--bcher-kva.test", dns.TXT)])

    @defer.inlineCallbacks
    def test_an_answer_too_big_for_udp_comes_whole_over_tcp(self):
        (record,) = yield defer.Deferred.fromCoroutine(
            self.resolver.lookup("sel._domainkey.dkim.test", "TXT"))
        self.assertEqual(b"".join(record).decode(), key_record(KEY))
        (big,) = yield defer.Deferred.fromCoroutine(self.resolver.lookup("big.test", "TXT"))
        self.assertEqual(b"".join(big), b"v=DKIM1; p=" + b"A" * 1400)
        self.assertEqual(len(self.resolver.client.connections), 1)  # the TCP retry

    @defer.inlineCallbacks
    def test_a_server_that_never_answers_is_a_temporary_error(self):
        silent = SilentServer()
        port = silent.start()
        self.addCleanup(silent.stop)
        resolver = Resolver(reactor, [("127.0.0.1", port)], timeout=0.3)
        self.addCleanup(resolver.close)
        with self.assertRaises(TemporaryDNSError) as caught:
            yield defer.Deferred.fromCoroutine(resolver.lookup("spf.test", "TXT"))
        self.assertIn("within 0.3s", str(caught.exception))
        self.assertGreaterEqual(silent.protocol.received, 1)
        # nothing cached: the next lookup asks again
        with self.assertRaises(TemporaryDNSError):
            yield defer.Deferred.fromCoroutine(resolver.lookup("spf.test", "TXT"))
        self.assertEqual(resolver.queries, 2)


class ServfailTests(unittest.TestCase):
    """SERVFAIL (a broken authority behind the resolver) is temporary, like a timeout."""

    def setUp(self):
        self.server = ZoneServer("test", zone_records(), servfail=[
            "spf.test", "sel._domainkey.dkim.test", "_dmarc.none.test"])
        port = self.server.start()
        self.addCleanup(self.server.stop)
        self.resolver = Resolver(reactor, [("127.0.0.1", port)], timeout=2)
        self.addCleanup(self.resolver.close)

    @defer.inlineCallbacks
    def test_servfail_is_temperror_for_spf_dkim_and_dmarc(self):
        with self.assertRaises(TemporaryDNSError):
            yield defer.Deferred.fromCoroutine(self.resolver.lookup("spf.test", "TXT"))
        spf = yield defer.Deferred.fromCoroutine(
            check_host(self.resolver, "127.0.0.1", "a@spf.test", "x.test"))
        self.assertEqual(spf.result, "temperror")
        raw = sign(message("bob@dkim.test"), domain="dkim.test", selector="sel", key=KEY)
        (signature,) = yield defer.Deferred.fromCoroutine(verify_all(self.resolver, raw))
        self.assertEqual(signature.result, "temperror")
        verdict = yield defer.Deferred.fromCoroutine(Authenticator(self.resolver).authenticate(
            peer="127.0.0.1", helo="x.test", mail_from="bob@dkim.test", raw=raw,
            from_domain="dkim.test"))
        # SPF fails, but the aligned signature could not be checked: not a reject
        self.assertEqual(decide(verdict, "hold").action, RETRY)
        verdict = yield defer.Deferred.fromCoroutine(Authenticator(self.resolver).authenticate(
            peer="127.0.0.1", helo="x.test", mail_from="c@soft.test", raw=message("c@none.test"),
            from_domain="none.test"))
        self.assertEqual(decide(verdict, "relay").action, RETRY)  # the policy is unknown
        self.flushLoggedErrors(RuntimeError)  # the test server logs what it answered SERVFAIL


class SPFTests(AuthTestCase):
    @defer.inlineCallbacks
    def test_results(self):
        cases = [("a@spf.test", "127.0.0.1", "pass"), ("a@spf.test", "192.0.2.9", "fail"),
                 ("a@include.test", "127.0.0.1", "pass"), ("a@include.test", "192.0.2.9", "fail"),
                 ("a@redirect.test", "127.0.0.1", "pass"), ("a@fail.test", "127.0.0.1", "fail"),
                 ("a@soft.test", "127.0.0.1", "softfail"), ("a@mx.test", "127.0.0.1", "pass"),
                 ("a@mx.test", "192.0.2.9", "fail"), ("a@nothing.test", "127.0.0.1", "none")]
        for sender, ip, expected in cases:
            result = yield self.spf(sender, ip)
            self.assertEqual((sender, ip, result.result), (sender, ip, expected))
            self.assertEqual(result.domain, sender.split("@")[1])

    @defer.inlineCallbacks
    def test_helo_identity(self):
        result = yield defer.Deferred.fromCoroutine(
            check_helo(self.resolver, "127.0.0.1", "helo.test"))
        self.assertEqual((result.result, result.domain, result.identity),
                         ("pass", "helo.test", "helo"))
        result = yield defer.Deferred.fromCoroutine(
            check_helo(self.resolver, "127.0.0.1", "[127.0.0.1]"))
        self.assertEqual(result.result, "none")  # an address literal names no domain

    @defer.inlineCallbacks
    def test_no_ip_address_is_none_and_a_broken_record_a_permerror(self):
        result = yield self.spf("a@spf.test", ip="local")
        self.assertEqual(result.result, "none")
        for record in ("v=spf1 include:", "v=spf1 ip4:300.1.1.1 -all", "v=spf1 a:%{z} -all",
                       "v=spf1 redirect=broken.test"):
            self.server.authorities[0].records[b"broken.test"] = [txt(record)]
            self.resolver = Resolver(reactor, self.resolver.client.servers, timeout=2)
            self.addCleanup(self.resolver.close)
            result = yield self.spf("a@broken.test")
            self.assertEqual(result.result, "permerror", record)

    @defer.inlineCallbacks
    def test_a_dns_timeout_is_temperror(self):
        silent = SilentServer()
        port = silent.start()
        self.addCleanup(silent.stop)
        resolver = Resolver(reactor, [("127.0.0.1", port)], timeout=0.2)
        self.addCleanup(resolver.close)
        result = yield defer.Deferred.fromCoroutine(
            check_host(resolver, "127.0.0.1", "a@spf.test", "x.test"))
        self.assertEqual(result.result, "temperror")


class DKIMTests(AuthTestCase):
    def verify(self, raw):
        return defer.Deferred.fromCoroutine(verify_all(self.resolver, raw))

    @defer.inlineCallbacks
    def test_a_valid_signature_passes(self):
        raw = sign(message("Bob <bob@dkim.test>"), domain="dkim.test", selector="sel", key=KEY)
        (result,) = yield self.verify(b"Received: from x by y; now\r\n" + raw)
        self.assertEqual((result.result, result.domain, result.selector),
                         ("pass", "dkim.test", "sel"))

    @defer.inlineCallbacks
    def test_changed_body_wrong_key_and_missing_key_fail(self):
        raw = sign(message("Bob <bob@dkim.test>", "Original text.\r\n"), domain="dkim.test",
                   selector="sel", key=KEY)
        (altered,) = yield self.verify(raw.replace(b"Original text.", b"Changed text."))
        self.assertEqual(altered.result, "fail")
        self.assertIn("body hash", altered.reason)
        (forged,) = yield self.verify(sign(message("Bob <bob@dkim.test>"), domain="dkim.test",
                                           selector="sel", key=OTHER_KEY))
        self.assertEqual(forged.result, "fail")
        (unknown,) = yield self.verify(sign(message("Bob <bob@dkim.test>"), domain="dkim.test",
                                            selector="nope", key=KEY))
        self.assertEqual(unknown.result, "permerror")
        header = sign(message("x@dkim.test"), domain="dkim.test", selector="sel", key=KEY)
        changed_header = header.replace(b"Subject: a post", b"Subject: another post")
        (result,) = yield self.verify(changed_header)
        self.assertEqual(result.result, "fail")

    @defer.inlineCallbacks
    def test_a_body_length_limit_or_an_unsigned_from_does_not_pass(self):
        raw = sign(message("Bob <bob@dkim.test>"), domain="dkim.test", selector="sel", key=KEY,
                   body_length=True)
        (limited,) = yield self.verify(raw + b"Appended by someone else.\r\n")
        self.assertEqual((limited.result, limited.domain), ("policy", "dkim.test"))
        (no_from,) = yield self.verify(sign(message("Bob <bob@dkim.test>"), domain="dkim.test",
                                            selector="sel", key=KEY, headers=("to", "subject")))
        self.assertEqual((no_from.result, no_from.reason), ("permerror", "From is not signed"))

    @defer.inlineCallbacks
    def test_garbage_is_a_permanent_error_never_a_crash(self):
        for signature in (b"v=1; a=rsa-sha256; d=dkim.test; s=sel; h=from; bh=!!; b=??",
                          b"v=1; a=rsa-sha256; d=dkim.test; s=sel; h=from; bh=; b=; l=x",
                          b"\xff\xfe; d=\x00", b"v=1; a=rsa-sha999; d=dkim.test; s=sel"):
            results = yield self.verify(b"DKIM-Signature: " + signature + b"\r\n"
                                        + message("b@dkim.test"))
            self.assertEqual(len(results), 1, signature)
            self.assertIn(results[0].result, ("permerror", "fail", "policy"), signature)

    @defer.inlineCallbacks
    def test_every_signature_is_checked(self):
        raw = sign(message("Bob <bob@dkim.test>"), domain="dkim.test", selector="sel", key=KEY)
        raw = sign(raw, domain="other.test", selector="sel", key=KEY)
        results = yield self.verify(raw)
        self.assertEqual([(r.result, r.domain) for r in results],
                         [("permerror", "other.test"), ("pass", "dkim.test")])
        self.assertEqual((yield self.verify(message("Bob <bob@dkim.test>"))), [])
        (bad,) = yield self.verify(b"DKIM-Signature: v=1; nonsense\r\n" + message("b@dkim.test"))
        self.assertEqual(bad.result, "permerror")


class DMARCTests(AuthTestCase):
    def test_organizational_domain_and_alignment(self):
        self.assertEqual(dmarc.organizational_domain("a.b.example.co.uk"), "example.co.uk")
        self.assertEqual(dmarc.organizational_domain("mail.org.test"), "org.test")
        self.assertEqual(dmarc.organizational_domain("co.uk"), "co.uk")
        self.assertTrue(dmarc.aligned("mail.org.test", "org.test", "r"))
        self.assertFalse(dmarc.aligned("mail.org.test", "org.test", "s"))
        self.assertTrue(dmarc.aligned("ORG.test", "org.test.", "s"))
        self.assertFalse(dmarc.aligned("evil.co.uk", "example.co.uk", "r"))
        self.assertFalse(dmarc.aligned("", "org.test", "r"))

    def test_records(self):
        record = dmarc.parse_record("v=DMARC1; p=Reject; sp=none; adkim=s; pct=20")
        self.assertEqual(record, dmarc.Record("reject", "none", "s", "r"))
        self.assertIsNone(dmarc.parse_record("p=reject; v=DMARC1"))
        self.assertIsNone(dmarc.parse_record("v=spf1 -all"))
        self.assertIsNone(dmarc.parse_record("v=DMARC1; p=maybe"))
        self.assertEqual(dmarc.parse_record("v=DMARC1; rua=mailto:x@y").policy, "none")

    def policy(self, domain):
        return defer.Deferred.fromCoroutine(dmarc.fetch_policy(self.resolver, domain))

    @defer.inlineCallbacks
    def test_policy_lookup_falls_back_to_the_organizational_domain(self):
        own = yield self.policy("dkim.test")
        self.assertEqual((own.domain, own.applied("dkim.test")), ("dkim.test", "reject"))
        sub = yield self.policy("mail.org.test")
        self.assertEqual((sub.domain, sub.applied("mail.org.test")), ("org.test", "reject"))
        top = yield self.policy("org.test")
        self.assertEqual(top.applied("org.test"), "quarantine")
        none = yield self.policy("spf.test")
        self.assertIsNone(none.record)
        twice = yield self.policy("twice.test")
        self.assertIsNone(twice.record)

    def test_evaluation(self):
        policy = dmarc.Policy(dmarc.parse_record("v=DMARC1; p=reject; aspf=s"), "org.test")
        spf_pass = SPFResult("pass", "mail.org.test", "mailfrom")
        self.assertEqual(dmarc.evaluate("org.test", policy, spf_pass, []).result, "fail")
        relaxed = dmarc.Policy(dmarc.parse_record("v=DMARC1; p=reject"), "org.test")
        self.assertEqual(dmarc.evaluate("org.test", relaxed, spf_pass, []).result, "pass")
        temp = SPFResult("temperror", "org.test", "mailfrom")
        result = dmarc.evaluate("org.test", relaxed, temp, [])
        self.assertEqual((result.result, result.temporary), ("temperror", True))
        # no record: aligned SPF still vouches, and nothing is refused
        result = dmarc.evaluate("spf.test", dmarc.Policy(None), SPFResult(
            "pass", "spf.test", "mailfrom"), [])
        self.assertEqual((result.result, result.aligned_pass, result.policy),
                         ("none", True, "none"))


class VerdictTests(AuthTestCase):
    def authenticate(self, raw, mail_from, helo="helo.test", peer="127.0.0.1"):
        from_domain = raw.split(b"From: ", 1)[1].split(b"\r\n", 1)[0].decode().rpartition("@")[2]
        return defer.Deferred.fromCoroutine(Authenticator(self.resolver).authenticate(
            peer=peer, helo=helo, mail_from=mail_from, raw=raw, from_domain=from_domain))

    @defer.inlineCallbacks
    def test_aligned_dkim_passes_dmarc_and_the_header_says_so(self):
        raw = sign(message("bob@dkim.test"), domain="dkim.test", selector="sel", key=KEY)
        verdict = yield self.authenticate(raw, "bob@dkim.test")
        self.assertTrue(verdict.authenticated)
        self.assertEqual(verdict.header("relay.test"),
                         "relay.test; spf=fail smtp.mailfrom=bob@dkim.test; "
                         "spf=pass smtp.helo=helo.test; dkim=pass header.d=dkim.test "
                         "header.s=sel; dmarc=pass policy.published-domain-policy=reject "
                         "header.from=dkim.test")
        self.assertEqual(decide(verdict, "refuse").action, RELAY)

    @defer.inlineCallbacks
    def test_decisions(self):
        forged = yield self.authenticate(message("bob@dkim.test"), "bob@dkim.test")
        self.assertFalse(forged.authenticated)
        decision = decide(forged, "relay")
        self.assertEqual(decision.action, REFUSE)  # p=reject wins over the local policy
        self.assertEqual(decision.reply[:2], (550, "5.7.1"))
        self.assertIn("p=reject", decision.reply[2])
        unknown = yield self.authenticate(message("carol@soft.test"), "carol@soft.test")
        self.assertEqual(unknown.dmarc.result, "none")
        self.assertEqual([decide(unknown, p).action for p in ("hold", "refuse", "relay")],
                         [HOLD, REFUSE, RELAY])
        spf_only = yield self.authenticate(message("ada@spf.test"), "ada@spf.test")
        self.assertEqual(decide(spf_only, "refuse").action, RELAY)
        # p=quarantine refuses too; a subdomain gets the organizational domain's sp=
        for sender, policy in (("x@org.test", "quarantine"), ("x@sub.org.test", "reject")):
            verdict = yield self.authenticate(message(sender), sender, peer="192.0.2.7")
            decision = decide(verdict, "relay")
            self.assertEqual((decision.action, verdict.dmarc.policy), (REFUSE, policy), sender)
            self.assertIn(f"p={policy}", decision.reply[2])
        # ... and relaxed alignment lets mail.org.test's SPF vouch for org.test
        verdict = yield self.authenticate(message("x@org.test"), "x@mail.org.test")
        self.assertEqual(decide(verdict, "refuse").action, RELAY)

    @defer.inlineCallbacks
    def test_a_dns_timeout_asks_to_retry(self):
        silent = SilentServer()
        port = silent.start()
        self.addCleanup(silent.stop)
        self.resolver = Resolver(reactor, [("127.0.0.1", port)], timeout=0.2)
        self.addCleanup(self.resolver.close)
        verdict = yield self.authenticate(message("ada@spf.test"), "ada@spf.test")
        self.assertIsInstance(verdict, Verdict)
        decision = decide(verdict, "relay")
        self.assertEqual((decision.action, decision.reply[:2]), (RETRY, (451, "4.7.0")))
        self.assertIn("dmarc=temperror", verdict.header("relay.test"))


class ConfigTests(unittest.TestCase):
    def load(self, **sections):
        return load_config(None, environ={}, overrides=sections)

    def test_dns_and_unauthenticated(self):
        config = self.load(dns={"servers": ["127.0.0.1:5353", "[::1]", "10.0.0.1"],
                                "timeout": "1.5s"})
        self.assertEqual(config["dns"]["servers"],
                         (("127.0.0.1", 5353), ("::1", 53), ("10.0.0.1", 53)))
        self.assertEqual(config["dns"]["timeout"], 1.5)
        self.assertEqual(self.load()["groups"]["unauthenticated"], "hold")
        self.assertEqual(self.load()["dns"]["servers"], ())
        env = load_config(None, environ={"EMAILD_DNS_SERVERS": "127.0.0.1:53, 127.0.0.2"})
        self.assertEqual(env["dns"]["servers"], (("127.0.0.1", 53), ("127.0.0.2", 53)))
        for sections, key, words in (
                ({"dns": {"servers": ["dns.example.org:53"]}}, "dns.servers", "IP address"),
                ({"dns": {"servers": ["127.0.0.1:70000"]}}, "dns.servers", "out of range"),
                ({"dns": {"servers": "999.1.1.1"}}, "dns.servers", "not an IP address"),
                ({"dns": {"servers": [53]}}, "dns.servers", "resolver address"),
                ({"dns": {"timeout": "0s"}}, "dns.timeout", "longer than 0"),
                ({"groups": {"unauthenticated": "allow"}}, "groups.unauthenticated",
                 "hold, refuse, relay"),
                ({"links": {"hold_ttl": "soon"}}, "links.hold_ttl", "duration")):
            with self.assertRaises(ConfigError) as caught:
                self.load(**sections)
            self.assertEqual(caught.exception.key, key)
            self.assertIn(words, caught.exception.problem)

    def test_system_resolvers_come_from_resolv_conf(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# comment\nsearch example.org\nnameserver 192.0.2.53\n"
                    "nameserver fe80::1%eth0\noptions ndots:2\n")
        self.assertEqual(system_servers(path), [("192.0.2.53", 53), ("fe80::1", 53)])
        self.assertEqual(system_servers(path + ".missing"), [("127.0.0.1", 53)])
