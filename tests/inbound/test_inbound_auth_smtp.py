"""
Sender authentication at the end of DATA, through the real daemon, a real
SMTP client (smtplib) and a real DNS server on loopback: aligned DKIM or
SPF is relayed; a forged From whose domain publishes p=reject is refused
550 5.7.1 before 250 and nothing is stored; C{[groups] unauthenticated}
refuse/relay; a DNS server that never answers gives 451 and nothing is
relayed.  (Holds: tests/inbound/test_inbound_hold.py.)
"""

from __future__ import annotations

import smtplib
import time

from twisted.internet import reactor, task, threads

from tests.authfixture import (
    KEY,
    WRONG_KEY,
    ZONE,
    DaemonWithDNS,
    SilentServer,
    post,
    signed,
    wait_for,
)
from tests.dkimsign import sign
from tests.dnsserver import ZoneServer


class PolicyAtEndOfData(DaemonWithDNS):
    async def test_aligned_dkim_and_aligned_spf_are_relayed(self):
        await self.start(unauthenticated="refuse")
        # Bob's envelope domain does not allow 127.0.0.1, but his DKIM signature passes
        code, text = await self.send("bob", signed(post("Bob <bob@dkim.test>", self.reply["bob"])))
        self.assertEqual(code, 250, text)
        bob_message = text.decode().rsplit(" ", 1)[1]
        self.assertEqual(await self.relayed(bob_message),
                         ["ada@spf.test", "carol@none.test", "dan@reject.test"])
        results = self.authentication(bob_message)
        self.assertTrue(results.startswith("relay.course.test; spf=fail smtp.mailfrom=bob@dkim.test;"),
                        results)
        self.assertIn("dkim=pass header.d=dkim.test header.s=sel", results)
        self.assertIn("dmarc=pass policy.published-domain-policy=reject header.from=dkim.test",
                      results)
        # Ada's domain has only SPF, which allows this server
        code, text = await self.send("ada", post("Ada <ada@spf.test>", self.reply["ada"],
                                                 message_id="<p2@spf.test>"))
        self.assertEqual(code, 250, text)
        ada_message = text.decode().rsplit(" ", 1)[1]
        self.assertEqual(len(await self.relayed(ada_message)), 3)
        self.assertIn("spf=pass smtp.mailfrom=ada@spf.test", self.authentication(ada_message))
        self.assertIn("dkim=none", self.authentication(ada_message))

    async def test_forged_from_with_p_reject_is_refused_before_250(self):
        await self.start(unauthenticated="relay")  # p=reject wins even over "relay"
        to = self.reply["bob"]
        forgeries = {
            "unsigned": post("Bob <bob@dkim.test>", to),
            "signed with another key": signed(post("Bob <bob@dkim.test>", to), WRONG_KEY),
            "body changed after signing": signed(post("Bob <bob@dkim.test>", to)).replace(
                b"Who is in?", b"Send me your password"),
            "signed by another domain": signed(post("Bob <bob@dkim.test>", to)).replace(
                b"d=dkim.test", b"d=spf.test"),
            "appended to a body length limit": sign(
                post("Bob <bob@dkim.test>", to), domain="dkim.test", selector="sel", key=KEY,
                body_length=True) + b"Click here: http://evil.test/\r\n",
            "From not signed": sign(post("Bob <bob@dkim.test>", to), domain="dkim.test",
                                    selector="sel", key=KEY, headers=("to", "subject")),
        }
        for what, data in forgeries.items():
            code, text = await self.send("bob", data)
            self.assertEqual(code, 550, (what, text))
            self.assertIn(b"5.7.1", text, what)
            self.assertIn(b"dkim.test publishes DMARC p=reject", text, what)
        # another envelope sender changes nothing (From is what members see)
        code, text = await self.send("dan", post("Dan <dan@reject.test>", self.reply["dan"]),
                                     mail_from="dan@spf.test")
        self.assertEqual((code, text[:5]), (550, b"5.7.1"))
        self.assertEqual(self.messages(), 0)
        self.assertEqual(self.query("SELECT count(*) FROM outbox"), [(0,)])

    async def test_not_the_members_address_is_refused(self):
        await self.start()
        for sender in ("Eve <eve@spf.test>", "Ada <ada@spf.test>, Bob <bob@dkim.test>"):
            code, text = await self.send("ada", post(sender, self.reply["ada"]))
            self.assertEqual(code, 550, sender)
            self.assertIn(b"the address the group knows you by", text)
            self.assertNotIn(b"ada@spf.test", text)
        self.assertEqual(self.messages(), 0)

    async def test_refuse_policy(self):
        await self.start(unauthenticated="refuse")
        code, text = await self.send("carol", post("Carol <carol@none.test>", self.reply["carol"]))
        self.assertEqual(code, 550, text)
        self.assertIn(b"5.7.1 the group only relays posts that none.test vouches for", text)
        self.assertEqual(self.messages(), 0)

    async def test_relay_policy_relays_unauthenticated_posts_and_records_it(self):
        await self.start(unauthenticated="relay")
        code, text = await self.send("carol", post("Carol <carol@none.test>", self.reply["carol"]))
        self.assertEqual(code, 250, text)
        message = text.decode().rsplit(" ", 1)[1]
        self.assertEqual(len(await self.relayed(message)), 3)
        results = self.authentication(message)
        self.assertIn("spf=softfail smtp.mailfrom=carol@none.test", results)
        self.assertIn("dmarc=fail policy.published-domain-policy=none header.from=none.test",
                      results)

    async def test_a_dns_server_that_never_answers_is_451_and_nothing_is_relayed(self):
        silent = SilentServer()
        # the DNS timeout is long enough for "served while DNS waits" to be
        # told apart from "served after it" on a loaded machine
        await self.start(unauthenticated="relay", dns_server=silent, dns_timeout="3s")
        for who, sender in (("ada", "Ada <ada@spf.test>"), ("carol", "Carol <carol@none.test>")):
            pending = self.send(who, post(sender, self.reply[who]))
            # while that post waits for DNS, the daemon serves everyone else
            await wait_for(lambda: silent.protocol.received > 0, timeout=5)
            started = time.monotonic()
            code, _ = await threads.deferToThread(_ehlo, self.smtp_port)
            self.assertEqual(code, 250)
            self.assertLess(time.monotonic() - started, 2.5)
            self.assertFalse(pending.called)
            code, text = await pending
            self.assertEqual(code, 451, text)
            self.assertIn(b"4.7.0", text)
            self.assertIn(b"try again later", text)
        await task.deferLater(reactor, 1, lambda: None)
        self.assertEqual(self.messages(), 0)
        self.assertEqual(self.query("SELECT count(*) FROM outbox"), [(0,)])

    async def test_servfail_is_451(self):
        await self.start(dns_server=ZoneServer("test", ZONE, servfail=["_dmarc.dkim.test"]))
        code, text = await self.send("bob", post("Bob <bob@dkim.test>", self.reply["bob"]))
        self.assertEqual((code, text[:5]), (451, b"4.7.0"))
        self.assertEqual(self.messages(), 0)
        self.flushLoggedErrors(RuntimeError)  # the test server logs what it answered SERVFAIL


def _ehlo(port: int):
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        return client.ehlo("other.client.test")
