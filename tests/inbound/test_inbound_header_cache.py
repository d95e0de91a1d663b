"""
What the modern email policy makes of a header value is remembered
(L{emaild.inbound.classify.parsed_values}): the same texts as
C{message.get_all}, for every corpus message and header, whatever the
field name's case, and a member's repeated From is parsed once.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial import unittest

from emaild.inbound import classify
from emaild.inbound.classify import header_values, parse_message, parsed_values
from emaild.inbound.reading import PostToRead, read_posts

CORPUS = Path(__file__).resolve().parent.parent / "corpus"

ODD = [
    b"From: =?utf-8?q?Ad=C3=A1?= <ada@example.org>, bob@example.net\r\n",
    b"from: \"Ada (home)\" <ada@example.org> (comment)\r\n",
    b"FROM: ada@example.org\r\n\t(folded)\r\n",
    b"From: <>\r\n",
    b"From: ,,,@@@\r\n",
    b"From: caf\xc3\xa9 <ada@example.org>\r\n",
    b"Subject: =?iso-8859-1?b?Y2Fm6Q==?= and more\r\n",
    b"Message-ID: <x@y> <z@w>\r\n",
    b"References: <a@b>\r\n <c@d>\r\n",
]


def messages():
    for path in sorted(CORPUS.glob("*.eml")):
        yield path.name, parse_message(path.read_bytes())
    for i, header in enumerate(ODD):
        yield f"odd {i}", parse_message(header + b"To: x@y\r\n\r\nbody\r\n")


class ParsedValuesTests(unittest.TestCase):
    def test_same_texts_as_get_all(self):
        checked = 0
        for label, message in messages():
            for name in {k for k, _ in message.raw_items()} | {"From", "FROM", "subject"}:
                try:
                    expected = [str(v) for v in message.get_all(name) or ()]
                except Exception as e:  # noqa: BLE001
                    with self.assertRaises(type(e), msg=(label, name)):
                        parsed_values(message, name)
                    continue
                # twice: the second answer comes from what was remembered
                self.assertEqual(parsed_values(message, name), expected, (label, name))
                self.assertEqual(parsed_values(message, name), expected, (label, name))
                checked += 1
        self.assertGreater(checked, 50)

    def test_header_values_unchanged(self):
        message = parse_message(ODD[0] + ODD[6] + b"\r\nbody\r\n")
        self.assertEqual(header_values(message, "From"),
                         ["Adá <ada@example.org>, bob@example.net"])
        self.assertEqual(header_values(message, "Subject"), ["café and more"])

    def test_a_repeated_from_is_parsed_once(self):
        classify._parsed_text.cache_clear()
        raw = (b"From: Ada Lovelace <ada@example.org>\r\nSubject: hello\r\n"
               b"Message-ID: <%d@example.org>\r\n\r\nhi\r\n")
        items = [PostToRead(raw % i, "ada@example.org", "relay.example", "Ada", 7)
                 for i in range(20)]
        read = read_posts(items, {7: (("ada@example.org", "Ada"),)})
        self.assertTrue(all(r.prepared is not None for r in read))
        info = classify._parsed_text.cache_info()
        # From parsed once, its 19 repeats remembered; the plain Subject
        # and Message-IDs read as written, never parsed
        self.assertGreaterEqual(info.hits, 19)
        self.assertLessEqual(info.misses, 1 + 2)

    def test_plain_message_ids_read_as_the_parser_reads_them(self):
        import random
        from email.policy import default

        classify._parsed_text.cache_clear()
        atext = "ABCXYZabcxyz0189!#$%&'*+-/=?^_`{|}~."
        rng = random.Random(3)
        for _ in range(3000):
            left, right = ("".join(rng.choice(atext) for _ in range(rng.randrange(1, 12)))
                           for _ in range(2))
            value = f"<{left}@{right}>"
            message = parse_message(f"Message-ID: {value}\r\n\r\nbody\r\n".encode())
            self.assertEqual(parsed_values(message, "Message-ID"),
                             [str(default.header_fetch_parse("Message-ID", value))], value)
        # none of them went through the parser
        self.assertEqual(classify._parsed_text.cache_info().misses, 0)
        # anything else does: comments, folding, two ids, a domain literal
        for value in ["<a@b> (comment)", "<a@b>\r\n <c@d>", "<a@[127.0.0.1]>", "a@b", "<a b@c>"]:
            message = parse_message(f"Message-ID: {value}\r\n\r\nbody\r\n".encode())
            self.assertEqual(parsed_values(message, "Message-ID"),
                             [str(v) for v in message.get_all("Message-ID")], value)

    def test_plain_unstructured_values_read_as_the_parser_reads_them(self):
        import random
        import string
        from email.policy import default

        classify._parsed_text.cache_clear()
        rng = random.Random(4)
        alphabet = string.printable.replace("\r", "").replace("\n", "") + "\x00\x01\x7f=?(\\\""
        names = ["Subject", "In-Reply-To", "References", "X-Mailer", "subject", "Keywords"]
        for _ in range(3000):
            value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
            if "=?" in value:
                continue
            name = rng.choice(names)
            message = parse_message(f"{name}: {value}\r\n\r\nbody\r\n".encode())
            fields = list(message.raw_items())
            if not fields:
                continue  # a value that ended the header block
            raw = fields[0][1]
            self.assertEqual(parsed_values(message, name),
                             [str(default.header_fetch_parse(name, raw))], (name, value))
        # none of them went through the parser
        self.assertEqual(classify._parsed_text.cache_info().misses, 0)
        # anything else does: an encoded word, folding, 8-bit, a structured field
        for name, value in [("Subject", "=?utf-8?q?caf=C3=A9?="), ("Subject", "a\r\n b"),
                            ("Subject", "caf\udce9"), ("To", "Ada <ada@example.org>"),
                            ("Date", "Wed, 2 Dec 2026 04:00:00 +0000")]:
            message = parse_message(f"{name}: {value}\r\n\r\nbody\r\n".encode(
                "utf-8", "surrogateescape"))
            self.assertEqual(parsed_values(message, name),
                             [str(v) for v in message.get_all(name)], value)
        self.assertEqual(classify._parsed_text.cache_info().misses, 5)

    def test_header_objects_made_in_code_are_not_taken_for_raw_values(self):
        from email.message import EmailMessage
        from email.policy import default

        # a raw Subject that decodes to text looking like an encoded word
        parsed = parse_message(b"Subject: =?utf-8?q?=3D=3Futf-8=3Fq=3Fx=3F=3D?=\r\n\r\nb\r\n")
        self.assertEqual(parsed_values(parsed, "Subject"), ["=?utf-8?q?x?="])
        made = EmailMessage(policy=default)
        made["Subject"] = parsed["Subject"]  # a header object whose text is that
        self.assertEqual(parsed_values(made, "Subject"), [str(v) for v in made.get_all("Subject")])
        # the same text as a raw value, parsed (and remembered) as "x"
        self.assertEqual(parsed_values(parse_message(b"Subject: =?utf-8?q?x?=\r\n\r\nb\r\n"),
                                       "Subject"), ["x"])
        self.assertEqual(parsed_values(made, "Subject"), [str(v) for v in made.get_all("Subject")])

    def test_long_values_are_not_remembered(self):
        classify._parsed_text.cache_clear()
        message = parse_message(b"Subject: " + b"x" * 2000 + b"\r\n\r\nbody\r\n")
        self.assertEqual(parsed_values(message, "Subject"), ["x" * 2000])
        self.assertEqual(classify._parsed_text.cache_info().currsize, 0)
