"""
A 7-bit text part is read for addresses once (its text is its bytes), and
its bytes still get the search for addresses as written: an address whose
local part reads differently from how it is written (C{=40} would read as
C{@}) is found all the same.
"""

from __future__ import annotations

from twisted.trial import unittest

from emaild.inbound import scrub
from tests.inbound.test_inbound_rewrite import MEMBERS, content, parse, plain, relay

BODY = "Hello all,\n" + "See you on Friday at the library.\n" * 60


class ReadOnceTests(unittest.TestCase):
    def readings_of_the_body(self, raw: bytes) -> int:
        readings = []

        def counting(real):
            def read(original):
                if len(original) > len(BODY) // 2:
                    readings.append(original)
                return real(original)
            return read

        # as text, and as bytes (the scrubber's two ways of reading)
        self.patch(scrub, "readable", counting(scrub.readable))
        self.patch(scrub, "readable_bytes", counting(scrub.readable_bytes))
        relay(raw)
        return len(readings)

    def test_a_clean_7bit_body_is_read_once(self):
        self.assertEqual(self.readings_of_the_body(plain(BODY, "us-ascii", "7bit")), 1)

    def test_a_body_whose_text_is_not_its_bytes_is_read_as_bytes_too(self):
        raw = plain(BODY.replace("library", "library=20"), "us-ascii", "quoted-printable")
        self.assertEqual(self.readings_of_the_body(raw), 2)

    def test_an_address_written_with_encoding_characters_is_not_passed_through(self):
        # x=40y reads as x@y: the address is looked for as it reads too, and
        # replaced in the copy (not merely hidden in a re-encoded part)
        members = [*MEMBERS, ("x=40y@example.org", "Xavier")]
        data = relay(plain(BODY + "Write to x=40y@example.org.\n", "us-ascii", "7bit"), members)
        self.assertNotIn("x=40y@example.org", content(parse(data)).lower())
        self.assertIn("Write to Xavier.", content(parse(data)))
        self.assertTrue(scrub.Scrubber(scrub.scrub_map(members)).found_literal(
            b"Write to X=40Y@EXAMPLE.ORG."))

    def test_the_replacing_patterns_are_compiled_only_when_something_is_found(self):
        members = [(f"member{i}@example.org", f"Member {i}") for i in range(50)]
        clean = scrub.Scrubber(scrub.scrub_map(members))
        self.assertEqual(clean.text("Nobody named here."), "Nobody named here.")
        self.assertFalse({"angle", "mailto", "cid"} & set(clean._patterns.__dict__))
        self.assertEqual(clean.text("write to <member7@example.org>."), "write to Member 7.")
        self.assertTrue({"angle", "mailto", "cid"} <= set(clean._patterns.__dict__))


class AddressesThatReadDifferentlyTests(unittest.TestCase):
    """
    A member's real address may itself hold what the reader decodes
    (C{=40}, C{%41}, C{&lt}, C{&amp;}...): the decoded copy must not show it,
    whichever way the post writes it.
    """

    ADDRESSES = ["x=40y@example.org", "a%41b@example.org", "tom&amp@example.org",
                 "j&lt;k@example.org", "q=3Dr@example.org", "u\\u0040v@example.org"]

    def test_the_decoded_copy_names_the_member_not_the_address(self):
        for address in self.ADDRESSES:
            members = [*MEMBERS, (address, "Xavier")]
            for written in (address, address.upper(), address.replace("@", "&#64;")):
                data = relay(plain(BODY + f"Write to {written} soon.\n", "us-ascii", "7bit"),
                             members)
                text = content(parse(data))
                self.assertNotIn(address.lower(), text.lower(), (address, written))
                self.assertIn("Write to Xavier soon.", text, (address, written))
