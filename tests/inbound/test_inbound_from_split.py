"""
The From fields as sender authentication reads them: the header-section
splitter for well-formed CRLF sections gives exactly what compat32's parser
gives, and anything it does not split goes to the parser.
"""

from __future__ import annotations

import random

from twisted.trial import unittest

from emaild.inbound.auth.policy import (
    from_addresses,
    from_values,
    parsed_from_values,
    split_from_values,
)

RECEIVED = (b"Received: from client.test ([127.0.0.1])\r\n\tby mx.test (emaild) with ESMTP;\r\n"
            b"\tWed, 02 Dec 2026 04:20:00 +0000\r\n")

#: like smtp-source's posts
SMTP_SOURCE = (RECEIVED + b"From: <member1@example.org>\r\nTo: <g.abcdefgh@relay.example.org>\r\n"
               b"Date: Wed,  2 Dec 2026 04:20:00 +0000 (UTC)\r\n"
               b"Message-Id: <20261202042000.ABCDEF@client.test>\r\nSubject: test\r\n\r\n"
               + b"La de da de da 1.\r\n" * 100)

#: like real mail: several Received, a folded DKIM signature, MIME
REAL = (RECEIVED + b"Received: from mail.example.org (mail.example.org [192.0.2.7])\r\n"
        b"\tby mx.example.org (Postfix) with ESMTPS id 4Q\r\n"
        b"\tfor <g.x@relay.example.org>; Tue, 1 Dec 2026 10:00:00 +0000 (UTC)\r\n"
        b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n"
        b"        d=example.org; s=s1; h=from:to:subject;\r\n        b=" + b"A" * 300 + b"\r\n"
        b"MIME-Version: 1.0\r\nFrom: =?UTF-8?Q?Ad=C3=A9?= Lovelace\r\n <Ada@Example.org>\r\n"
        b"Subject: =?UTF-8?Q?R=C3=A9union?=\r\nTo: g.x@relay.example.org\r\n"
        b"Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\n"
        b"From: not@header.example\r\n\r\nx\r\n--b1--\r\n")

NAMES = [b"From", b"from", b"FROM", b"fRoM", b"To", b"Subject", b"X-From", b"From-X",
         b"Sender", b"Reply-To", b"Received", b"X~!#$%&'*+./09;<=>?@[]^_`{|}", b""]
VALUE_PIECES = [b"a@b.example", b"<c@d.example>", b"Ann <ann@x.example>", b",", b" ", b"  ",
                b"\t", b'"q, r" <q@r.example>', b"=?utf-8?q?x=40y?=", b"(c@comment)", b":",
                b";", b"Grp: e@f.example;", b"\xc3\xa9", b"\xff", b"\x00", b"\x7f", b"@",
                b"From: z@z.example", b"from:", b"\x0b", b"\x0c", b"\x1c", b"\x85"]
ENDS = [b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r\n\r"]


def header_section(rng: random.Random, odd: float) -> bytes:
    """A header section, mostly well-formed; C{odd} is the chance of each oddity."""

    def end() -> bytes:
        return rng.choice(ENDS) if rng.random() < odd else b"\r\n"

    def value() -> bytes:
        return b"".join(rng.choice(VALUE_PIECES) for _ in range(rng.randint(0, 5)))

    lines = [RECEIVED] if rng.random() < 0.8 else []
    if rng.random() < odd:  # a continuation first, an mbox line, a bad line...
        lines.append(rng.choice([b" x", b"\tFrom: a@b", b"From a@b Tue", b"not a header",
                                 b":no name", b"From : a@b", b" ", b""]) + end())
    for _ in range(rng.randint(0, 8)):
        name = rng.choice(NAMES)
        if rng.random() < odd:
            name += rng.choice([b" ", b"\t", b"\xc3\xa9", b"\x01", b"From "])
        lines.append(name + b":" + rng.choice([b"", b" ", b"\t", b"  "]) + value() + end())
        for _ in range(rng.choice([0, 0, 0, 1, 2])):
            lines.append(rng.choice([b" ", b"\t", b"    "]) + value() + end())
        if rng.random() < odd:
            lines.append(rng.choice([b"From x@y Mon", b"garbage", b" ", b"\t\t"]) + end())
    body = b"\r\n" if rng.random() > odd else rng.choice([b"", b"\n", b"\r", b"\r\n\r\n"])
    return b"".join(lines) + body + b"From: body@example.org\r\n" * rng.randint(0, 1)


class SplitFromValuesTests(unittest.TestCase):
    def test_common_posts_are_split_as_the_parser_splits_them(self):
        self.assertEqual(split_from_values(SMTP_SOURCE), ("<member1@example.org>",))
        self.assertEqual(split_from_values(REAL),
                         ("=?UTF-8?Q?Ad=C3=A9?= Lovelace\r\n <Ada@Example.org>",))
        for raw in (SMTP_SOURCE, REAL):
            self.assertEqual(split_from_values(raw), parsed_from_values(raw))
        self.assertEqual(from_addresses(SMTP_SOURCE), ["member1@example.org"])
        self.assertEqual(from_addresses(REAL), ["ada@example.org"])

    def test_values_keep_what_compat32_keeps(self):
        cases = [
            b"From:\r\n\r\n", b"From:   \r\n\tx@y\r\n\r\n", b"From: a@b \r\n\r\n",
            b"From:\ta@b,\r\n \r\n\tc@d\r\n\r\n", b"X: 1\r\nfrom: a@b\r\nFROM: c@d\r\n\r\n",
            b"X-From: a@b\r\nFrom-X: c@d\r\nX: from: e@f\r\n\r\n",
            b"X: y\r\n from: a@b\r\n\r\n", b"From: \xc3\xa9 <a@b>\r\n\r\n",
            b"From: a@b\x00\x7f\r\n\r\n", b"From: a@b\x0b\x0c\x1c\x85\r\n\r\n",
        ]
        for raw in cases:
            self.assertIsNotNone(split_from_values(raw), raw)
            self.assertEqual(split_from_values(raw), parsed_from_values(raw), raw)

    def test_anything_else_goes_to_the_parser(self):
        cases = [
            b"From: a@b\n\n", b"From: a@b\r\rx", b"From: a@b\rTo: c\r\n\r\n",
            b"X: y\r\nFrom: a@b\nFrom: c@d\r\n\r\n", b"X: y\r\r\nFrom: a@b\r\n\r\n",
            b"From a@b Mon Dec  1\r\nFrom: c@d\r\n\r\n", b" From: a@b\r\n\r\n",
            b":x\r\nFrom: a@b\r\n\r\n", b"From : a@b\r\n\r\n", b"From: a@b\r\n",
            b"not a header\r\nFrom: a@b\r\n\r\n", b"\r\nFrom: a@b\r\n\r\n",
            b"X\xc3\xa9: y\r\nFrom: a@b\r\n\r\n", b"X: y\r\nFrom: a@b\n\r\n\r\n",
            b"", b"\r\n\r\n",
        ]
        for raw in cases:
            self.assertIsNone(split_from_values(raw), raw)
            self.assertEqual(from_values(raw), parsed_from_values(raw), raw)

    def test_generated_sections_split_as_the_parser_splits_them(self):
        rng = random.Random(12)
        split = 0
        for i in range(6000):
            raw = header_section(rng, odd=0.0 if i % 3 == 0 else 0.15)
            fast = split_from_values(raw)
            if fast is not None:
                split += 1
                self.assertEqual(fast, parsed_from_values(raw), raw)
            self.assertEqual(from_values(raw), parsed_from_values(raw), raw)
        # the well-formed third at least takes the splitter's way
        self.assertGreater(split, 2000)

    def test_random_bytes_split_as_the_parser_splits_them(self):
        pieces = [b"From:", b"from:", b"X:", b"From ", b"\r\n", b"\n", b"\r", b" ", b"\t",
                  b"a@b", b"<c@d>", b",", b"\xc3\xa9", b"\xff", b":", b"\r\n\r\n", b"\x00"]
        rng = random.Random(5)
        for _ in range(6000):
            raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 16)))
            self.assertEqual(from_values(raw), parsed_from_values(raw), raw)
