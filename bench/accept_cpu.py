"""
CPU per accepted post of the accept side alone, in one process: the SMTP
session (EHLO, MAIL, RCPT, DATA, QUIT over a StringTransport), the envelope
syntax, sender authentication (its DNS results already remembered, as in a
burst from one domain), the handler's RCPT lookup and group commit (through
their Batchers, to stores that answer at once) and the per-message log line
(to a text file observer like twistd's, writing to /dev/null).  No sockets,
no database, no relay: what is left is the Python that the daemon's reactor
thread runs per post on the accept side, which a loaded machine moves far
less than the end-to-end bench (compare two trees by running this with each
one's PYTHONPATH, alternately).

    PYTHONPATH=$PWD .venv/bin/python bench/accept_cpu.py --posts 3000 --repeat 5
    PYTHONPATH=$PWD .venv/bin/python bench/accept_cpu.py --real   # MIME, DKIM-less real-mail headers
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogBeginner, textFileLogObserver

from emaild.groups.addresses import ReplyAddresses, ReplyToken
from emaild.groups.store import Member
from emaild.inbound.auth.dmarc import Policy, Record
from emaild.inbound.auth.policy import SenderAuthentication
from emaild.inbound.auth.spf import SPFResult
from emaild.inbound.auth.verdict import Authenticator
from emaild.inbound.handler import InboundHandler
from emaild.inbound.server import InboundFactory

SENDER = "member1@students.example.edu"
HELO = "client.example.edu"
PEER = "127.0.0.1"

SMTP_SOURCE = (f"From: <{SENDER}>\r\nTo: <{{rcpt}}>\r\n"
               "Date: Wed,  2 Dec 2026 04:20:00 +0000 (UTC)\r\n"
               "Message-Id: <20261202042000.ABCDEF@client.example.edu>\r\nSubject: test\r\n\r\n"
               ).encode() + b"La de da de da 1.\r\n" * 110
REAL = (b"Received: from mail.example.edu (mail.example.edu [192.0.2.7])\r\n"
        b"\tby mx.students.example.edu (Postfix) with ESMTPS id 4Q\r\n"
        b"\tfor <{rcpt}>; Tue, 1 Dec 2026 10:00:00 +0000 (UTC)\r\n"
        b"Received: by mail.example.edu with SMTP id ffacd0b85a97d-3\r\n"
        b"        for <{rcpt}>; Tue, 01 Dec 2026 02:00:00 -0800 (PST)\r\n"
        b"MIME-Version: 1.0\r\nFrom: Ada Lovelace <" + SENDER.encode() + b">\r\n"
        b"Date: Tue, 1 Dec 2026 11:00:00 +0100\r\nMessage-ID: <CAE+abcdefg@mail.example.edu>\r\n"
        b"Subject: =?UTF-8?Q?R=C3=A9union_de_groupe?=\r\nTo: {rcpt}\r\n"
        b"Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + b"Bonjour =C3=A0 tous, voici le compte rendu de la r=C3=A9union.\r\n" * 20
        + b"--b1\r\nContent-Type: text/html; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b"PGRpdj5Cb25qb3VyIMOgIHRvdXMsIHZvaWNpIGxlIGNvbXB0ZSByZW5kdTwvZGl2Pgo=\r\n" * 20
        + b"--b1--\r\n")


class Store:
    """Commits at once: the group commit's own Python, not the database's."""

    def __init__(self):
        self.next_id = 0
        self.last = None

    def receive_many(self, posts):
        self.last = posts[-1]
        ids = list(range(self.next_id, self.next_id + len(posts)))
        self.next_id += len(posts)
        return defer.succeed(ids)


class Groups:
    def __init__(self, member: Member):
        self.member = member

    def by_tokens(self, tokens):
        return defer.succeed([self.member for _ in tokens])


def build(clock: Clock):
    addresses = ReplyAddresses("bench salt", "bench.example.org")
    member = Member(group_id=7, person_id=42, email=SENDER, display_name="Member One",
                    left_at=None, secret_hi=12345, secret_lo=67890,
                    joined_at=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc))
    rcpt = addresses.address(ReplyToken(7, 42, 12345, 67890))

    class Resolver:
        reactor = clock

    authenticator = Authenticator(Resolver())
    far = 1e12  # remembered for the whole run, as within a burst
    authenticator.results.put(("helo", PEER, HELO), far, SPFResult("pass", HELO, "helo"))
    authenticator.results.put(("mailfrom", PEER, SENDER, HELO), far,
                              SPFResult("pass", "students.example.edu", "mailfrom"))
    authenticator.results.put(("dmarc", "students.example.edu"), far,
                              Policy(Record("reject"), "students.example.edu"))
    sender_auth = SenderAuthentication(authenticator, None, "hold", "bench.example.org")
    kw = dict(max_posts_per_hour=0, sender_auth=sender_auth)
    try:
        handler = InboundHandler(Store(), Groups(member), addresses, None, None, reactor=clock,
                                 **kw)
    except TypeError:  # a tree whose handler takes no reactor
        handler = InboundHandler(Store(), Groups(member), addresses, None, None, **kw)
    factory = InboundFactory(handler, hostname="mx.bench.example.org", reactor=clock,
                             max_sessions_per_client=10**9, max_connections_per_minute=10**9)
    return factory, rcpt


def one_post(factory, clock: Clock, commands: list[bytes], message: bytes) -> bytes:
    address = IPv4Address("TCP", PEER, 40000)
    protocol = factory.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    for command in commands:
        protocol.dataReceived(command)
        clock.advance(0)  # the end of the reactor turn (batches start)
    protocol.dataReceived(message)
    clock.advance(0)
    protocol.dataReceived(b"QUIT\r\n")
    protocol.connectionLost(None)
    clock.advance(0.002)  # about 500 posts/s
    return transport.value()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--real", action="store_true", help="real-mail-like post (MIME)")
    args = parser.parse_args()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(open(os.devnull, "w"))],
                                     redirectStandardIO=False)
    clock = Clock()
    clock.advance(1_764_648_000)
    factory, rcpt = build(clock)
    body = (REAL if args.real else SMTP_SOURCE).replace(b"{rcpt}", rcpt.encode())
    commands = [f"EHLO {HELO}\r\n".encode(), f"MAIL FROM:<{SENDER}>\r\n".encode(),
                f"RCPT TO:<{rcpt}>\r\n".encode(), b"DATA\r\n"]
    message = body + b".\r\n"
    out = one_post(factory, clock, commands, message)
    assert b"250 2.0.0 Ok: queued as" in out, out.decode(errors="replace")
    best = None
    for _ in range(args.repeat):
        t0 = time.process_time()
        for _ in range(args.posts):
            one_post(factory, clock, commands, message)
        us = (time.process_time() - t0) / args.posts * 1e6
        best = us if best is None else min(best, us)
        print(f"{us:.1f} us CPU per post")
    print(f"best of {args.repeat}: {best:.1f} us CPU per accepted post "
          f"({'real-mail-like' if args.real else 'smtp-source-like'}, {len(body)} octets)")


if __name__ == "__main__":
    main()
