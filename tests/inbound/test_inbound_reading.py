"""
Reading the posts of a batch for the relay (parse, check, scrub) without
the database: each post's result on its own, and a post that cannot be read
reported alone while the others are read.
"""

from __future__ import annotations

from twisted.trial import unittest

from emaild.inbound.reading import PostToRead, read_posts

MEMBERS = {7: (("ada@example.org", "Ada"), ("bob@example.net", "Bob"))}


def item(body: bytes, **headers) -> PostToRead:
    head = b"".join(f"{k.replace('_', '-')}: {v}\r\n".encode() for k, v in headers.items())
    raw = b"From: Ada <ada@example.org>\r\nSubject: hi bob@example.net\r\n" + head + b"\r\n" + body
    return PostToRead(raw, "ada@example.org", "relay.example", "Ada", 7)


class ReadPostsTests(unittest.TestCase):
    def test_posts_are_read_and_scrubbed(self):
        relayed, ignored = read_posts([item(b"write to bob@example.net\r\n"),
                                       item(b"away", Auto_Submitted="auto-replied")], MEMBERS)
        self.assertEqual(relayed.prepared.subject, "hi Bob")
        self.assertEqual(relayed.prepared.author, "Ada")
        self.assertNotIn(b"bob@example.net", relayed.prepared.entity)
        self.assertIn("Auto-Submitted", ignored.ignored)

    def test_a_post_that_raises_is_reported_alone(self):
        read = read_posts([PostToRead(None, "x@y", "z", "A", 7), item(b"hello\r\n")], MEMBERS)
        self.assertIn("Traceback", read[0].error)
        self.assertIsNotNone(read[1].prepared)
