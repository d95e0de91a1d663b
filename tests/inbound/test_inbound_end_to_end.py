"""
The group relay end to end, through the real daemon service: Ada posts from
the group page, Bob and Carol get copies in the maildir outbox; Bob replies
by SMTP (smtplib, STARTTLS on the self-signed certificate) to his own reply
address; Ada and Carol get it, threaded; no copy carries anyone's real
address.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import socket
import ssl
from urllib.parse import urlsplit

from twisted.internet import defer, reactor, threads

from emaild.service import Emaild
from tests.dnsserver import ZoneServer, txt
from tests.support import DatabaseTestCase, wait_for
from tests.webtest import Browser

DOMAIN = "relay.course.test"
REAL = {"ada": "ada@example.org", "bob": "bob@example.net", "carol": "carol@example.com"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _send(port: int, mail_from: str, to: str, data: bytes) -> tuple[int, bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # self-signed, as sending MTAs accept
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.starttls(context=context)
        client.ehlo("mail.example.net")
        client.mail(mail_from)
        client.rcpt(to)
        return client.data(data)


class EndToEndTests(DatabaseTestCase):
    timeout = 120

    def delivered(self) -> dict[str, list[email.message.EmailMessage]]:
        new = self.tmp / "outbox" / "new"
        found: dict[str, list] = {}
        if not new.is_dir():
            return found
        for path in sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns):
            raw = path.read_bytes()
            # the maildir adds Return-Path and Delivered-To (the recipient's own
            # mailbox, as the receiving MTA would); the copy itself follows
            head, copy = raw.split(b"\n", 2)[:2], raw.split(b"\n", 2)[2]
            recipient = head[1].decode().split(": ", 1)[1].strip()
            for address in REAL.values():
                self.assertNotIn(address.encode(), copy.lower(), f"{address} in a copy")
            found.setdefault(recipient, []).append(
                email.message_from_bytes(copy, policy=email.policy.default))
        return found

    @defer.inlineCallbacks
    def test_web_post_then_smtp_reply_threads_and_stays_anonymous(self):
        yield defer.ensureDeferred(self._scenario())

    async def _scenario(self):
        # Bob's domain vouches for his mail server (SPF), as it must for the
        # relay to pass his reply on (tests/inbound/test_inbound_auth_smtp.py)
        dns_server = ZoneServer("example.net", {"example.net": [txt("v=spf1 ip4:127.0.0.1 -all")]})
        dns_port = dns_server.start()
        self.addCleanup(dns_server.stop)
        http_port, smtp_port = _free_port(), _free_port()
        base = f"http://127.0.0.1:{http_port}"
        service = Emaild(self.config(
            http={"endpoint": f"tcp:{http_port}:interface=127.0.0.1", "public_url": base},
            smtp={"endpoint": f"tcp:{smtp_port}:interface=127.0.0.1", "relay_domain": DOMAIN},
            relay={"poll_interval": "0.5s"}, dns={"servers": [f"127.0.0.1:{dns_port}"]},
            # only the group's copies here: Ada opening the group page would
            # also tell Bob and Carol she is active (tests/digest/test_notify.py)
            notifications={"daily_limit": 0}), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        await service.ready

        web = service.web
        course = await web.people.ensure_course("", "phys", "Physics 101")
        group_id = await web.people.ensure_group(course, "Study Group")
        people = {}
        for key, name in (("ada", "Ada Lovelace"), ("bob", "Bob Babbage"), ("carol", "Carol Shaw")):
            people[key] = await web.people.add(REAL[key], name)
            await web.people.join_group(group_id, people[key].id)

        # Ada signs in with a link and posts from the group page
        browser = Browser(base)
        self.addCleanup(browser.close)
        login = await web.links.login_url(people["ada"].id, f"/groups/{group_id}")
        response, _ = await browser.get(urlsplit(login).path)
        self.assertEqual(response.code, 303)
        response, page = await browser.get(f"/groups/{group_id}")
        self.assertEqual(response.code, 200)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        response, _ = await browser.post(f"/groups/{group_id}/post", data={
            "csrf_token": csrf, "subject": "Problem set 3",
            "text": "Who wants to work on it together? Mail me: ada@example.org"})
        self.assertEqual(response.code, 303)

        await wait_for(lambda: len(self.delivered()) == 2, timeout=30)
        copies = self.delivered()
        self.assertEqual(sorted(copies), [REAL["bob"], REAL["carol"]])
        bob_copy = copies[REAL["bob"]][0]
        self.assertIn("Ada Lovelace via Study Group", str(bob_copy["From"]))
        bob_reply_address = bob_copy["Reply-To"].addresses[0].addr_spec
        post_id = bob_copy["Message-ID"]
        self.assertEqual(copies[REAL["carol"]][0]["Message-ID"], post_id)
        self.assertNotEqual(copies[REAL["carol"]][0]["Reply-To"].addresses[0].addr_spec,
                            bob_reply_address)

        # Bob answers from his mail client to the address the copy came from
        reply = (f"From: Bob Babbage <{REAL['bob']}>\r\nTo: {bob_reply_address}\r\n"
                 f"Subject: Re: Problem set 3\r\nIn-Reply-To: {post_id}\r\n"
                 f"References: {post_id}\r\nMessage-ID: <r1@mail.example.net>\r\n\r\n"
                 f"Count me in.\r\n\r\nOn Friday Ada Lovelace via Study Group"
                 f" <{bob_reply_address}> wrote:\r\n> Mail me: Ada Lovelace\r\n"
                 f"--\r\nBob, {REAL['bob']}\r\n").encode()
        code, text = await threads.deferToThread(_send, smtp_port, REAL["bob"],
                                                 bob_reply_address, reply)
        self.assertEqual(code, 250, text)
        self.assertIn(b"queued as", text)

        await wait_for(lambda: sum(len(v) for v in self.delivered().values()) == 4, timeout=30)
        copies = self.delivered()
        for who in ("ada", "carol"):
            message = copies[REAL[who]][-1]
            self.assertEqual(message["Subject"], "Re: Problem set 3")
            self.assertEqual(message["In-Reply-To"], post_id)
            self.assertIn("Bob Babbage via Study Group", str(message["From"]))
            self.assertIn("Count me in.", message.get_body(("plain",)).get_content())
        self.assertEqual(len(copies[REAL["bob"]]), 1)  # not sent back to its author
        (thread,) = await web.groups.threads(group_id)
        self.assertEqual((thread.subject, thread.posts), ("Problem set 3", 2))
