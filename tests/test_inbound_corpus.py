"""
The real-world corpus (tests/corpus) through the real daemon: each message
is sent with smtplib to a member's reply address and is either refused
with a clear SMTP reply or stored and then relayed or ignored with a
reason; never a 4xx, a crash, or a message left unprocessed.  No copy
carries a member's real address.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

from twisted.internet import defer, reactor, threads

from emaild.inbound.server import DATA_LINE_LIMIT
from emaild.service import Emaild
from tests.dnsserver import ZoneServer, txt
from tests.support import DatabaseTestCase, wait_for
from tests.test_inbound_end_to_end import _free_port
from tests.test_inbound_rewrite import EXPECTED

CORPUS = Path(__file__).parent / "corpus"
DOMAIN = "relay.course.test"
MEMBERS = {"ada@example.org": "Ada Lovelace", "bob@example.net": "Bob Babbage",
           "carol@example.com": "Carol Shaw"}


def _send(port: int, mail_from: str, to: str, data: bytes):
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("mx.example.net")
        client.mail(mail_from)
        client.rcpt(to)
        try:
            return client.data(data)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error


class CorpusTests(DatabaseTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_every_corpus_message_ends_relayed_ignored_or_refused(self):
        yield defer.ensureDeferred(self._scenario())

    async def _scenario(self):
        smtp_port = _free_port()
        # the members' domains vouch for this server (SPF), so that what is
        # tested here is the relay, not sender authentication
        zones = {d: {d: [txt("v=spf1 ip4:127.0.0.1 -all")]}
                 for d in ("example.org", "example.net", "example.com")}
        dns_server = ZoneServer("example.org", zones.pop("example.org"), zones)
        dns_port = dns_server.start()
        self.addCleanup(dns_server.stop)
        service = Emaild(self.config(
            http={"endpoint": "tcp:0:interface=127.0.0.1"},
            smtp={"endpoint": f"tcp:{smtp_port}:interface=127.0.0.1", "relay_domain": DOMAIN},
            relay={"poll_interval": "0.5s"}, dns={"servers": [f"127.0.0.1:{dns_port}"]}),
            reactor)
        service.startService()
        self.addCleanup(service.stopService)
        await service.ready
        web = service.web
        course = await web.people.ensure_course("", "phys", "Physics 101")
        group_id = await web.people.ensure_group(course, "Study Group")
        reply = {}
        for address, name in MEMBERS.items():
            person = await web.people.add(address, name)
            await web.people.join_group(group_id, person.id)
            member = await web.groups.member(group_id, person.id)
            reply[address] = web.reply_addresses.address(member.token)

        outcomes = {}
        for name, (mail_from, relayed) in sorted(EXPECTED.items()):
            to = reply.get(mail_from.lower(), reply["ada@example.org"])
            raw = (CORPUS / name).read_bytes()
            code, text = await threads.deferToThread(_send, smtp_port, mail_from, to, raw)
            outcomes[name] = (code, text.decode("utf-8", "replace"))
            if max(len(line) for line in raw.split(b"\n")) + 2 > DATA_LINE_LIMIT:
                # a line far beyond RFC 5322's 998 octets: answered, connection closed
                self.assertEqual((code, text), (500, b"5.5.6 Line too long"), name)
                continue
            self.assertIn(code, (250, 550), f"{name}: {code} {text!r}")
            if code == 550:
                self.assertIn(b"5.7.1", text)
                self.assertFalse(relayed, f"{name} should have been relayed: {text!r}")

        stored = [name for name, (code, _) in outcomes.items() if code == 250]
        await wait_for(lambda: self.query(
            "SELECT count(*) FROM inbound_recipients WHERE state = 'received'")[0][0] == 0,
            timeout=60)
        rows = self.query("SELECT r.state, r.reason FROM inbound_recipients r ORDER BY r.id")
        self.assertEqual(len(rows), len(stored))
        for name, (state, reason) in zip(stored, rows):
            expected = "done" if EXPECTED[name][1] else "ignored"
            self.assertEqual(state, expected, f"{name}: {reason}")
            self.assertTrue(reason, name)
        relayed = [n for n, (_, r) in EXPECTED.items()
                   if r and outcomes[n][0] != 500]
        self.assertEqual(sorted(n for n in stored if EXPECTED[n][1]), sorted(relayed))
        for (body,) in self.query("SELECT body FROM outbox"):
            for address in MEMBERS:
                self.assertNotIn(address.encode(), bytes(body).lower())
        self.assertEqual(self.query("SELECT count(*) FROM outbox")[0][0], 2 * len(relayed))
