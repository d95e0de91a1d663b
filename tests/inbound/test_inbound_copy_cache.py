"""
Composing each member's copy (L{build_copy}) does the post's own work once:
the author's and group's names are checked once for all the copies of a
post, the Subject line written once, and line ends made CRLF as the
general substitution makes them.
"""

from __future__ import annotations

import itertools
import random
import re

from twisted.trial import unittest

from emaild.inbound import rewrite, scrub
from emaild.inbound.classify import parse_message
from emaild.inbound.rewrite import prepare, scrub_map
from tests.inbound.test_inbound_rewrite import MEMBERS, copy_of, parse

_unique = itertools.count()


class CopyCacheTests(unittest.TestCase):
    def test_crlf_as_the_general_substitution(self):
        rng = random.Random(2)
        for _ in range(3000):
            text = "".join(rng.choice(["a", "\n", "\r", "\r\n", " ", "\n\r", "é"])
                           for _ in range(rng.randrange(0, 12)))
            self.assertEqual(rewrite._crlf(text), re.sub(r"\r\n|\r|\n", "\r\n", text), text)

    def test_names_are_checked_once_for_all_the_copies_of_a_post(self):
        n = next(_unique)
        raw = (f"From: Ada <ada@example.org>\r\nSubject: plans {n}\r\n\r\n"
               "see you\r\n").encode()
        prepared = prepare(parse_message(raw), scrub_map(MEMBERS), author=f"Ada {n}")
        checks = []
        real = scrub.usable_name

        def counting(text):
            checks.append(text)
            return real(text)

        self.patch(scrub, "usable_name", counting)
        copies = [copy_of(prepared, author=prepared.author, group_name=f"Group {n}",
                          reply_address=f"group-r{i}@relay.example") for i in range(20)]
        self.assertEqual(sorted(checks), [f"Ada {n}", f"Group {n}"])
        for i, data in enumerate(copies):
            message = parse(data)
            self.assertEqual(message["From"], f"Ada {n} via Group {n} <group-r{i}@relay.example>")
            self.assertEqual(message["Subject"], f"plans {n}")

    def test_a_name_that_is_an_address_stays_neutral_in_every_copy(self):
        n = next(_unique)
        prepared = prepare(parse_message(b"Subject: x\r\n\r\nhi\r\n"), scrub_map(MEMBERS))
        for _ in range(3):
            message = parse(copy_of(prepared, author=f"ada{n}@example.org",
                                    group_name=f"g{n} [at] example.org"))
            self.assertEqual(message["From"].addresses[0].display_name,
                             "A group member via the group")
