"""
Inbound mail is parsed with a policy that remembers each parsed header
(L{emaild.inbound.classify.POLICY}): every header, part and prepared copy
must be what C{email.policy.default} gives, for the corpus and generated
headers full of what parsers trip on (odd parameters, encoded words,
RFC 2231, folding, 8-bit bytes, defects), and a post's Content-Type must be
parsed once, not once per question asked of it.
"""

from __future__ import annotations

import email.headerregistry
import email.policy
import itertools
import random
from email.parser import BytesParser
from pathlib import Path

from twisted.trial import unittest

from emaild.inbound import classify, rewrite, scrub
from emaild.inbound.classify import POLICY, parse_message
from emaild.inbound.rewrite import prepare, scrub_map
from tests.inbound.test_inbound_rewrite import MEMBERS

CORPUS = Path(__file__).resolve().parent.parent / "corpus"

VALUES = {
    "Content-Type": ['text/plain; charset="utf-8"', "text/plain; charset=us-ascii (comment)",
                     'multipart/mixed; boundary="=_x"; boundary="=_y"', "multipart/alternative",
                     "text/html; charset*=utf-8''%E2%82%AC; name*0=\"a\"; name*1=\"b\"",
                     "text", "/", "text/plain;;", 'text/plain; name="a@b.c"', "TEXT/HTML",
                     "text/plain; charset=\"x\r\n\tyz\"", "image/png; name=\"=?utf-8?q?f=C3=BC?=\"",
                     "text/plain; charset=\udcff", "multipart/report; report-type=delivery-status",
                     "application/octet-stream; name=\"a\\\"b\"", "text/plain; x=(", ""],
    "Content-Disposition": ["attachment; filename=\"a b.pdf\"", "inline",
                            "attachment; filename*=utf-8''%C3%A9.txt", "attachment; filename=",
                            "form-data; name=x; filename=\"c:\\\\x\""],
    "Content-Transfer-Encoding": ["base64", " Quoted-Printable ", "8bit (x)", "x-uue", ""],
    "From": ["Ada <ada@example.org>", '"Lovelace, Ada" <ada@example.org>', "ada@example.org",
             "=?utf-8?q?Ad=C3=A1?= <ada@example.org>", "<>", "undisclosed-recipients:;",
             "Ada <ada@example.org", "a@b, c@d", "Ada\udce9 <ada@example.org>"],
    "Subject": ["hi", "=?utf-8?b?w6k=?= x", "Re: =?iso-8859-1?q?caf=E9?=", "a\r\n b", "\udcff"],
    "Message-ID": ["<a@b>", "<a@b> <c@d>", "no brackets", ""],
    "Date": ["Wed, 2 Dec 2026 04:00:00 +0000", "yesterday", "Wed, 31 Feb 2026 25:00:00 +9999"],
    "X-Other": ["anything", "=?bad?q?x?="],
}


def generated_messages():
    rng = random.Random(5)
    for _ in range(150):
        headers = []
        for name in rng.sample(sorted(VALUES), rng.randrange(1, len(VALUES))):
            for _ in range(rng.choice((1, 1, 1, 2))):
                headers.append(f"{name}: {rng.choice(VALUES[name])}")
        raw = "\r\n".join(headers) + "\r\n\r\nbody ada@example.org\r\n"
        yield raw.encode("utf-8", "surrogateescape")


def messages():
    for path in sorted(CORPUS.glob("*.eml")):
        yield path.read_bytes()
    yield from generated_messages()


def header_form(header):
    form = [type(header).__name__, str(header), header.name,
            [(type(d).__name__, str(d)) for d in header.defects]]
    for attribute in ("params", "content_type", "content_disposition", "cte", "addresses",
                      "datetime"):
        if hasattr(header, attribute):
            value = getattr(header, attribute)
            form.append(dict(value) if attribute == "params" else str(value))
    return form


def part_form(part):
    form = [[(type(d).__name__, str(d)) for d in part.defects], part.get_content_type(),
            part.get_boundary(), part.get_content_charset(), part.get_filename(),
            part.get_params(), part.get_content_disposition(), part.is_multipart()]
    for name in dict.fromkeys(k.lower() for k in part.keys()):
        form.append([header_form(h) for h in part.get_all(name)])
    return form


def forms(message):
    return [part_form(part) for part in message.walk()]


class RememberingPolicyTests(unittest.TestCase):
    def test_every_header_and_part_as_the_default_policy_gives(self):
        for raw in messages():
            # twice: the second time every header comes from memory
            for _ in range(2):
                expected = BytesParser(policy=email.policy.default).parsebytes(raw)
                self.assertEqual(forms(parse_message(raw)), forms(expected), raw)

    def test_prepared_copies_as_with_the_default_policy(self):
        counter = itertools.count()
        fixed = lambda n: f"{next(counter) % 7:0{2 * n}x}"  # noqa: E731
        for raw in messages():
            results = []
            for policy in (email.policy.default, POLICY, POLICY):
                self.patch(rewrite.secrets, "token_hex", fixed)
                self.patch(scrub.secrets, "token_hex", fixed)
                counter = itertools.count()
                message = BytesParser(policy=policy).parsebytes(raw)
                results.append(prepare(message, scrub_map(MEMBERS), author="Ada"))
            self.assertEqual(results[1], results[0], raw)
            self.assertEqual(results[2], results[0], raw)

    def test_a_posts_content_type_is_parsed_once(self):
        parses = []
        real = email.headerregistry.ContentTypeHeader.parse.__func__

        def counting(cls, value, kwds):
            parses.append(value)
            return real(cls, value, kwds)

        self.patch(email.headerregistry.ContentTypeHeader, "parse", classmethod(counting))
        raw = (b"From: Ada <ada@example.org>\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/alternative; boundary=\"b-parse-once\"\r\n\r\n"
               b"--b-parse-once\r\nContent-Type: text/plain; charset=utf-8; x=once\r\n\r\nhi\r\n"
               b"--b-parse-once\r\nContent-Type: text/html; charset=utf-8; x=once\r\n\r\n"
               b"<p>hi</p>\r\n--b-parse-once--\r\n")
        prepare(parse_message(raw), scrub_map(MEMBERS))
        self.assertEqual(len(parses), 3, parses)

    def test_long_values_are_not_remembered(self):
        value = "text/plain; name=\"" + "x" * (classify._FETCHED_VALUE + 10) + "\""
        self.assertIsNot(POLICY.header_fetch_parse("Content-Type", value),
                         POLICY.header_fetch_parse("Content-Type", value))
        short = "text/plain; name=\"short\""
        self.assertIs(POLICY.header_fetch_parse("Content-Type", short),
                      POLICY.header_fetch_parse("Content-Type", short))


def state(message):
    """Everything a parsed message holds, comparable (defects by type and text)."""
    fields = dict(vars(message))
    fields["defects"] = [(type(d).__name__, str(d)) for d in message.defects]
    fields["policy"] = type(message.policy).__name__
    payload = fields.get("_payload")
    if isinstance(payload, list):
        fields["_payload"] = [state(p) for p in payload]
    return fields


HEAD_LINES = ["From: Ada <ada@example.org>", "Subject: hi", "Subject: folded", "\tcontinued",
              " continued", "To: x@y", ":", "X-Empty:", "no colon here", "From nobody",
              "From x@y Mon Jan  1 00:00:00 2026", "Bad Name: x", "Content-Type: text/plain",
              "Content-Type: multipart/mixed; boundary=b", "Content-Type: message/rfc822",
              "Content-Type: message/delivery-status", "Content-Type: text/html; charset=x",
              "Content-Transfer-Encoding: base64", "X-8bit: caf\udce9", "X-Ctl: a\x0bb",
              "X-Ctl: a\x0cb", "X-Ctl: a\x1cb", "X-Ctl: a\x1eb", "X-Nul: a\x00b", "X-Del: \x7f",
              "X-Long: " + "y" * 1200]
ENDS = ["\r\n", "\r\n", "\r\n", "\n", "\r", "\n\r"]
BODY_PIECES = ["text", "\r\n", "\n", "\r", "--b\r\n", "--b--\r\n", "Content-Type: x\r\n",
               "\r\n\r\n", "=?x?q?a?=", "\udcff", "\x0b", "From x\r\n", " ", "é"]


def generated_raw():
    rng = random.Random(11)
    for _ in range(3000):
        lines = [rng.choice(HEAD_LINES) + rng.choice(ENDS) for _ in range(rng.randrange(0, 7))]
        separator = rng.choice(["\r\n", "\r\n", "\r\n", "\n", "", "\r\n\r\n"])
        body = "".join(rng.choice(BODY_PIECES) for _ in range(rng.randrange(0, 12)))
        yield ("".join(lines) + separator + body).encode("utf-8", "surrogateescape")
    yield from (b"", b"\r\n\r\n", b"\r\n\r\nbody", b"X: y\r\n\r\n", b"X: y\r\n\r\n\r\n")


class SinglePartParseTests(unittest.TestCase):
    def test_the_same_message_as_the_parser_makes(self):
        fast = 0
        for raw in itertools.chain(messages(), generated_raw()):
            full = BytesParser(policy=POLICY).parsebytes(raw)
            simple = classify._parse_single_part(raw)
            if simple is not None:
                fast += 1
                self.assertEqual(state(simple), state(full), raw)
            self.assertEqual(state(parse_message(raw)), state(full), raw)
        # many of the generated ones take the short way (the rest: the parser)
        self.assertGreater(fast, 200)

    def test_a_plain_post_is_not_read_line_by_line(self):
        lines = []
        real = email.feedparser.BufferedSubFile.readline

        def counting(self):
            line = real(self)
            lines.append(line)
            return line

        self.patch(email.feedparser.BufferedSubFile, "readline", counting)
        body = b"".join(b"line %d of the post\r\n" % i for i in range(100))
        message = parse_message(b"From: Ada <ada@example.org>\r\nSubject: hi\r\n\r\n" + body)
        self.assertEqual(message.get_payload(decode=True), body)
        self.assertLess(len(lines), 10)

    def test_a_multipart_header_block_is_parsed_once(self):
        parses = []
        real = email.feedparser.FeedParser._parse_headers

        def counting(self, lines):
            parses.append(lines)
            return real(self, lines)

        self.patch(email.feedparser.FeedParser, "_parse_headers", counting)
        for kind in ("multipart/mixed", "Multipart/Alternative", "message/rfc822"):
            del parses[:]
            parse_message(f"From: a@b\r\nContent-Type: {kind}; boundary=x\r\n\r\n"
                          "--x\r\n\r\nhi\r\n--x--\r\n".encode())
            self.assertEqual(len([p for p in parses if any("From" in line for line in p)]), 1)

    def test_a_plain_post_does_not_go_through_the_parser(self):
        # its header block is split into fields here, as the parser would
        feeds = []
        real = email.feedparser.FeedParser.feed

        def counting(self, data):
            feeds.append(data)
            return real(self, data)

        self.patch(email.feedparser.FeedParser, "feed", counting)
        raw = (b"From: Ada <ada@example.org>\r\nSubject: hi\r\n\tthere\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n")
        message = parse_message(raw)
        self.assertEqual(feeds, [])
        self.assertEqual(state(message), state(BytesParser(policy=POLICY).parsebytes(raw)))
        # a multipart one still does
        del feeds[:]
        parse_message(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n")
        self.assertEqual(len(feeds), 1)
