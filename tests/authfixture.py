"""
The whole daemon (L{emaild.service.Emaild}: SMTP, web, relay processor,
maildir outbox) with its resolver pointed at a real DNS server on loopback
that serves the member domains' SPF, DKIM and DMARC records, and a group of
four members whose domains vouch for their mail in different ways:

  - ada@spf.test: SPF allows 127.0.0.1, no DMARC record;
  - bob@dkim.test: SPF allows only 192.0.2.1, DKIM key at sel._domainkey,
    DMARC p=reject;
  - carol@none.test: SPF ~all from elsewhere, DMARC p=none;
  - dan@reject.test: SPF -all from elsewhere, DMARC p=reject, no DKIM.
"""

from __future__ import annotations

import email
import email.policy
import re
import smtplib
import socket
from email.utils import formatdate

from twisted.internet import reactor, threads
from twisted.names import dns

from emaild.groups.addresses import reply_addresses
from emaild.service import Emaild
from tests.dkimsign import key_record, new_key, sign
from tests.dnsserver import SilentServer, ZoneServer, txt
from tests.support import DatabaseTestCase, wait_for
from tests.webtest import Browser

DOMAIN = "relay.course.test"
KEY = new_key()
WRONG_KEY = new_key()
MEMBERS = {"ada": ("ada@spf.test", "Ada Lovelace"), "bob": ("bob@dkim.test", "Bob Babbage"),
           "carol": ("carol@none.test", "Carol Shaw"), "dan": ("dan@reject.test", "Dan Bricklin")}

ZONE = {
    "spf.test": [txt("v=spf1 ip4:127.0.0.1 -all")],
    "dkim.test": [txt("v=spf1 ip4:192.0.2.1 -all")],
    "sel._domainkey.dkim.test": [txt(key_record(KEY))],
    "_dmarc.dkim.test": [txt("v=DMARC1; p=reject")],
    "none.test": [txt("v=spf1 ip4:192.0.2.1 ~all")],
    "_dmarc.none.test": [txt("v=DMARC1; p=none")],
    "reject.test": [txt("v=spf1 ip4:192.0.2.1 -all")],
    "_dmarc.reject.test": [txt("v=DMARC1; p=reject")],
    "mx.sender.test": [dns.Record_A("127.0.0.1", ttl=300)],
}


#: the reason a post of Carol's is held for
HELD_REASON = ("held until the member confirms it: none.test does not vouch for it (no aligned "
               "SPF or DKIM pass, DMARC fail)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(sender: str, to: str, subject: str = "Problem set 3", body: str = "Who is in?\r\n",
         message_id: str = "<p1@mail.test>") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: {formatdate(usegmt=True)}\r\nMessage-ID: {message_id}\r\n\r\n{body}").encode()


def signed(data: bytes, key=KEY) -> bytes:
    return sign(data, domain="dkim.test", selector="sel", key=key)


def _transaction(port: int, mail_from: str, to: str, data: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mx.sender.test")
        client.mail(mail_from)
        code, text = client.rcpt(to)
        if code != 250:
            return code, text
        try:
            return client.data(data)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error


class DaemonWithDNS(DatabaseTestCase):
    timeout = 120

    async def start(self, unauthenticated: str = "hold", dns_server=None, dns_timeout="2s",
                    **sections):
        if dns_server is None:
            dns_server = ZoneServer("test", ZONE)
        self.dns = dns_server
        dns_port = dns_server.start()
        self.addCleanup(dns_server.stop)
        http_port, self.smtp_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{http_port}"
        self.cfg = self.config(
            http={"endpoint": f"tcp:{http_port}:interface=127.0.0.1", "public_url": self.base},
            smtp={"endpoint": f"tcp:{self.smtp_port}:interface=127.0.0.1",
                  "relay_domain": DOMAIN},
            relay={"poll_interval": "0.5s"}, notifications={"daily_limit": 0},
            dns={"servers": [f"127.0.0.1:{dns_port}"], "timeout": dns_timeout},
            groups={"unauthenticated": unauthenticated}, **sections)
        self.service = Emaild(self.cfg, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        await self.service.ready
        web = self.service.web
        course = await web.people.ensure_course("", "phys", "Physics 101")
        self.group_id = await web.people.ensure_group(course, "Study Group")
        self.ids, self.reply = {}, {}
        for key, (address, name) in MEMBERS.items():
            self.ids[key] = (await web.people.add(address, name)).id
            await web.people.join_group(self.group_id, self.ids[key])
        addresses = reply_addresses(self.cfg)
        for member in await web.groups.members(self.group_id):
            key = member.email.split("@")[0]
            self.reply[key] = addresses.address(member.token)

    def send(self, who: str, data: bytes, mail_from: str | None = None):
        """One SMTP transaction to C{who}'s reply address: (code, text) of DATA."""
        mail_from = MEMBERS[who][0] if mail_from is None else mail_from
        return threads.deferToThread(_transaction, self.smtp_port, mail_from, self.reply[who],
                                     data)

    def messages(self) -> int:
        return self.query("SELECT count(*) FROM inbound_messages")[0][0]

    def authentication(self, message_id) -> str:
        return self.query("SELECT authentication FROM inbound_messages WHERE id = %s",
                          (int(message_id),))[0][0]

    def states(self, message_id) -> list[tuple[str, str | None]]:
        return self.query("SELECT state, reason FROM inbound_recipients WHERE message_id = %s",
                          (int(message_id),))

    def copies(self, message_id) -> list[str]:
        """Recipients of the relayed copies of a received message."""
        return [r[0] for r in self.query(
            "SELECT o.recipient FROM outbox o JOIN group_posts p"
            "  ON o.batch = 'group ' || p.group_id || ' post ' || p.id"
            " JOIN inbound_recipients r ON r.id = p.inbound_id"
            " WHERE r.message_id = %s ORDER BY o.recipient", (int(message_id),))]

    async def relayed(self, message_id, copies: int = 3) -> list[str]:
        await wait_for(lambda: len(self.copies(message_id)) == copies, timeout=30)
        return self.copies(message_id)

    def mailbox(self, address: str) -> list[email.message.EmailMessage]:
        """What the maildir outbox delivered to C{address}."""
        new = self.tmp / "outbox" / "new"
        found = []
        for path in sorted(new.iterdir() if new.is_dir() else [],
                           key=lambda p: p.stat().st_mtime_ns):
            raw = path.read_bytes()
            _return_path, _, rest = raw.partition(b"\n")
            delivered_to, _, copy = rest.partition(b"\n")
            if delivered_to.decode().split(": ", 1)[1].strip() == address:
                found.append(email.message_from_bytes(copy, policy=email.policy.default))
        return found

    # -- holds ---------------------------------------------------------------
    async def held_post(self, who="carol", sender="Carol Shaw <carol@none.test>", **kwargs):
        """Post as C{who} (by default: Carol, whose domain vouches for nothing); held."""
        code, text = await self.send(who, post(sender, self.reply[who], **kwargs))
        self.assertEqual(code, 250, text)
        message_id = text.decode().rsplit(" ", 1)[1]
        self.assertEqual(self.states(message_id), [("held", HELD_REASON)])
        return message_id

    async def question(self, address: str, count: int = 1) -> str:
        """The link in the C{count}th "Did you send this?" mail to C{address}."""
        await wait_for(lambda: len(self.mailbox(address)) >= count, timeout=30)
        mail = self.mailbox(address)[count - 1]
        self.assertIn("Did you send this", str(mail["Subject"]))
        text = mail.get_body(("plain",)).get_content()
        (link,) = set(re.findall(re.escape(self.base) + r"/hold/[A-Za-z0-9]+", text))
        return link

    def browser(self) -> Browser:
        browser = Browser(self.base)
        self.addCleanup(browser.close)
        return browser


__all__ = ["MEMBERS", "WRONG_KEY", "DaemonWithDNS", "SilentServer", "post", "signed", "wait_for"]
