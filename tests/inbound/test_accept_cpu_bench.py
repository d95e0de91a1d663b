"""
bench/accept_cpu.py still drives a whole accepted post through the session,
sender authentication and the handler (so its figures measure what they say).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial import unittest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "accept_cpu.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("accept_cpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class AcceptCPUBenchTests(unittest.TestCase):
    def test_each_post_is_accepted_authenticated_and_stored(self):
        bench = load_bench()
        clock = Clock()
        clock.advance(1_764_648_000)
        factory, rcpt = bench.build(clock)
        commands = [f"EHLO {bench.HELO}\r\n".encode(), f"MAIL FROM:<{bench.SENDER}>\r\n".encode(),
                    f"RCPT TO:<{rcpt}>\r\n".encode(), b"DATA\r\n"]
        for body in (bench.SMTP_SOURCE, bench.REAL):
            message = body.replace(b"{rcpt}", rcpt.encode()) + b".\r\n"
            out = bench.one_post(factory, clock, commands, message)
            self.assertIn(b"250 2.1.5 Ok\r\n354 ", out)
            self.assertIn(b"250 2.0.0 Ok: queued as ", out)
        self.assertEqual(factory.handler.members.queries, 2)
        self.assertEqual(factory.handler.posts.messages, 2)
        self.assertEqual(factory.sessions, set())
        stored = factory.handler.posts.store.last
        self.assertIn("dmarc=pass", stored.authentication)
        self.assertTrue(stored.raw.startswith(b"Received: from client.example.edu"))
