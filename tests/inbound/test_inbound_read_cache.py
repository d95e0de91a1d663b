"""
What reading a post remembers between posts (the group's scrub map, each
name's check, the addresses in a From): the same result as working it out
again, nothing a caller changes leaks into the next post, and the tokens
that replace addresses in ids are still new for every post.
"""

from __future__ import annotations

import itertools

from twisted.trial import unittest

from emaild.inbound import reading, scrub
from emaild.inbound.reading import PostToRead, read_posts

_unique = itertools.count()


def group(size: int) -> tuple[tuple[str, str], ...]:
    n = next(_unique)
    return tuple((f"m{i}.{n}@example.org", f"Member {i} of {n}") for i in range(size))


def uncached_scrub_map(members) -> dict[str, str]:
    # the definition: each address's name, checked every time
    result = {}
    for address, name in members:
        key = (address or "").strip().lower()
        if key:
            text = scrub.clean(name)[:100]
            result[key] = text if scrub.usable_name(text) else scrub.ANONYMOUS
    return result


class ScrubMapCacheTests(unittest.TestCase):
    def counting_usable_name(self) -> list[str]:
        calls: list[str] = []
        real = scrub.usable_name

        def counting(text):
            calls.append(text)
            return real(text)

        self.patch(scrub, "usable_name", counting)
        return calls

    def test_same_map_as_checking_every_name(self):
        odd = [(" Ada@Example.org ", "Ada"), ("bob@example.net", "bob@example.net"),
               ("", "nobody"), (None, "none"), ("c@example.org", None),
               ("d@example.org", "D\r\nBcc: x@y"), ("e@example.org", "E [at] example"),
               ("ada@example.org", "Ada again"), ("f@example.org", "F" * 300)]
        for members in (odd, list(reversed(odd)), odd[:3]):
            self.assertEqual(list(scrub.scrub_map(members).items()),
                             list(uncached_scrub_map(members).items()))
            self.assertEqual(list(scrub.scrub_map(members).items()),
                             list(uncached_scrub_map(members).items()))

    def test_a_second_post_of_the_group_checks_no_name_again(self):
        members = group(200)
        calls = self.counting_usable_name()
        scrub.scrub_map(members)
        self.assertGreaterEqual(len(calls), 200)
        del calls[:]
        scrub.Scrubber(scrub.scrub_map(members))
        self.assertEqual(calls, [])

    def test_changing_a_map_does_not_change_the_next(self):
        members = group(3)
        first = scrub.scrub_map(members)
        first["intruder@example.org"] = "x"
        first[members[0][0]] = "changed"
        self.assertEqual(scrub.scrub_map(members), uncached_scrub_map(members))

    def test_pairs_that_are_lists_are_read_too(self):
        members = [["ada@example.org", "Ada"]]
        self.assertEqual(scrub.scrub_map(members), {"ada@example.org": "Ada"})

    def test_scrubbers_of_one_map_agree_but_ids_get_new_tokens(self):
        members = group(5)
        one = scrub.Scrubber(scrub.scrub_map(members))
        two = scrub.Scrubber(scrub.scrub_map(members))
        address = members[2][0]
        self.assertEqual(one.text(f"hi {address}"), two.text(f"hi {address}"))
        ident = f"<x.{address}>"
        first, second = one.text(ident, ident=True), two.text(ident, ident=True)
        self.assertNotIn(address, first + second)
        self.assertNotEqual(first, second)
        self.assertEqual(one.text(ident, ident=True), first)
        self.assertEqual(len(set(one.tokens.values())), 5)

    def test_names_a_scrubber_is_given_are_still_checked(self):
        # a map not made by scrub_map: its names are checked by the scrubber
        scrubber = scrub.Scrubber({"Ada@Example.org ": "ada@example.org", "b@x.org": "Bea"})
        self.assertEqual(scrubber.names, {"ada@example.org": scrub.ANONYMOUS, "b@x.org": "Bea"})


class ReadPostCacheTests(unittest.TestCase):
    def item(self, sender: str, from_: str, body: str, name: str = "Ada") -> PostToRead:
        raw = f"From: {from_}\r\nSubject: hi\r\n\r\n{body}\r\n".encode()
        return PostToRead(raw, sender, "relay.example", name, 7)

    def test_senders_override_members_as_in_one_map(self):
        members = {7: (("ada@example.org", "Ada Member"), ("bob@example.net", "Bob"))}
        posts = [self.item("ada@example.org", "Someone <bob@example.net>",
                           "from bob@example.net and ada@example.org", name="Ada Author"),
                 self.item("zed@example.com", "Zed <zed@example.com>, <other@example.com>",
                           "zed@example.com other@example.com bob@example.net", name="Zed")]
        for post in posts:
            (read,) = read_posts([post], members)
            text = read.prepared.entity.decode()
            self.assertNotIn("@example", text.split("\r\n\r\n", 1)[1])
        (read,) = read_posts([posts[0]], members)
        # bob@example.net is the From: the author's name replaces it, as
        # when the senders came after the members in one list
        self.assertIn("from Ada Author and Ada Author", read.prepared.entity.decode())

    def test_the_from_is_parsed_once_for_posts_that_repeat_it(self):
        calls = []
        real = reading.getaddresses

        def counting(values):
            calls.append(values)
            return real(values)

        self.patch(reading, "getaddresses", counting)
        members = {7: group(2)}
        from_ = f"Ada <ada.{next(_unique)}@example.org>"
        read_posts([self.item("ada@example.org", from_, f"post {i}") for i in range(5)], members)
        self.assertEqual(len(calls), 1)


class DisplayNameCacheTests(unittest.TestCase):
    NAMES = ["Ada", "Ada Lovelace", "ada@example.org", "ADA&#64;EXAMPLE.ORG", "Bea [at] x.org",
             "", "  ", "Dr. <x>", "m1.{n}@example.org", "M1.{n}&#x40;example&period;org",
             "Call m1.{n} at example.org", "Zoë\r\nBcc: x", "x" * 300]

    def expected(self, scrubber, name):
        # the definition: clean, usable, and no member's address in it
        name = scrub.clean(name)[:100]
        return name if scrub.usable_name(name) and not scrubber.found(name) \
            else scrub.ANONYMOUS_NAME

    def test_as_worked_out_each_time_and_asked_once(self):
        members = group(3)
        n = members[0][0].split(".")[1].split("@")[0]
        names = [name.replace("{n}", n) for name in self.NAMES]
        for scrubber in (scrub.Scrubber(scrub.scrub_map(members)), scrub.Scrubber({})):
            for name in names:
                self.assertEqual(scrubber.display_name(name), self.expected(scrubber, name),
                                 name)
        again = scrub.Scrubber(scrub.scrub_map(members))
        expected = [self.expected(again, name) for name in names]
        calls = []
        real = scrub.usable_name
        self.patch(scrub, "usable_name", lambda text: calls.append(text) or real(text))
        self.assertEqual([again.display_name(name) for name in names], expected)
        self.assertEqual(calls, [])
