"""
The SMTP transport's pipelining against real relays: tests/relay.py with
PIPELINING on and off, and Postfix's smtp-sink, directly and through the
delaying proxy of bench/delay_proxy.py, which also counts how many times the
client waited for the server (its "turns"): with PIPELINING one per message,
in lock step four (MAIL, RCPT, DATA, the data).
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from bench.delay_proxy import DelayProxy
from emaild.outbound.smtp import SMTPTransport
from emaild.outbound.transport import Outcome, OutgoingMessage
from tests.relay import Relay

POSTFIX = Path(__file__).resolve().parents[2] / ".tools" / "postfix"
SMTP_SINK = POSTFIX / "usr" / "sbin" / "smtp-sink"


def message(n: int, recipient: str = "alice@example.org") -> OutgoingMessage:
    return OutgoingMessage(n, f"bounce-{n}@relay.example", recipient,
                           b"From: course@example.org\nSubject: %d\n\nHello %d.\n" % (n, n))


class PipeliningTestCase(TestCase):
    def transport(self, port: int, **kw) -> SMTPTransport:
        kw.setdefault("connections", 1)
        t = SMTPTransport(reactor, "127.0.0.1", port, tls="none", helo_name="client.test",
                          connect_timeout=5.0, reply_timeout=5.0, data_timeout=5.0, **kw)

        async def shut():
            t.abort()
            await t.close()

        self.addCleanup(lambda: defer.ensureDeferred(shut()))
        return t

    def relay(self, **kw) -> Relay:
        relay = Relay(reactor, **kw)
        relay.start()
        self.addCleanup(relay.stop)
        return relay

    def proxy(self, port: int, rtt: float = 0.002) -> tuple[DelayProxy, int]:
        proxy = DelayProxy(reactor, "127.0.0.1", port, rtt)
        listening = proxy.listen()
        self.addCleanup(proxy.stop)
        return proxy, listening

    def sink(self) -> int:
        if not SMTP_SINK.exists():
            raise self.skipTest("smtp-sink missing: run scripts/tools.sh")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        sink = subprocess.Popen(
            [str(SMTP_SINK), *user, f"127.0.0.1:{port}", "64"],
            env={**os.environ, "LD_LIBRARY_PATH": str(POSTFIX / "usr" / "lib" / "postfix")},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def stop():
            sink.terminate()
            sink.wait(10)

        self.addCleanup(stop)
        return port

    async def wait_listening(self, port: int):
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                await task.deferLater(reactor, 0.02, lambda: None)
        self.fail(f"nothing listens on {port}")

    async def deliver_all(self, t: SMTPTransport, n: int, **kw) -> list:
        results = await defer.gatherResults([t.deliver(message(i, **kw)) for i in range(n)])
        await t.close()
        return results


class TurnTests(PipeliningTestCase):
    N = 20

    async def _turns(self, pipelining: bool) -> tuple[int, Relay]:
        relay = self.relay(pipelining=pipelining)
        proxy, port = self.proxy(relay.port)
        results = await self.deliver_all(self.transport(port), self.N)
        self.assertEqual({r.outcome for r in results}, {Outcome.SENT})
        self.assertEqual(len(relay.accepted), self.N)
        self.assertEqual(relay.connections, 1)
        return proxy.turns, relay

    async def test_pipelining_one_turn_per_message(self):
        turns, relay = await self._turns(pipelining=True)
        # EHLO, the first envelope, one per message (data + next envelope), QUIT
        self.assertEqual(turns, self.N + 3)
        self.assertEqual([m.recipients for m in relay.accepted[:2]],
                         [["alice@example.org"]] * 2)

    async def test_lock_step_without_pipelining(self):
        turns, _ = await self._turns(pipelining=False)
        self.assertEqual(turns, 4 * self.N + 2)

    async def test_refusals_in_the_pipeline_are_attributed(self):
        def policy(rcpt):
            return (550, "5.1.1 no such user") if rcpt.startswith("bob") else None

        relay = self.relay(rcpt_policy=policy,
                           data_policy=lambda m: (451, "4.3.0 later")
                           if m.mail_from == "bounce-3@relay.example" else (250, "ok"))
        _, port = self.proxy(relay.port)
        t = self.transport(port)
        recipients = ["alice@example.org", "bob@example.org", "carol@example.org",
                      "carol@example.org", "bob@example.org", "dave@example.org"]
        results = await defer.gatherResults(
            [t.deliver(message(i, r)) for i, r in enumerate(recipients)])
        self.assertEqual([r.outcome for r in results],
                         [Outcome.SENT, Outcome.FAILED, Outcome.SENT, Outcome.RETRY,
                          Outcome.FAILED, Outcome.SENT])
        self.assertEqual(results[3].code, 451)
        self.assertEqual([m.mail_from for m in relay.accepted],
                         ["bounce-0@relay.example", "bounce-2@relay.example",
                          "bounce-5@relay.example"])


class SinkTests(PipeliningTestCase):
    async def test_smtp_sink(self):
        port = self.sink()
        await self.wait_listening(port)
        results = await self.deliver_all(self.transport(port, connections=2), 200)
        self.assertEqual({r.outcome for r in results}, {Outcome.SENT})

    async def test_smtp_sink_through_delay(self):
        port = self.sink()
        await self.wait_listening(port)
        proxy, delayed = self.proxy(port, rtt=0.004)
        results = await self.deliver_all(self.transport(delayed, connections=2), 60)
        self.assertEqual({r.outcome for r in results}, {Outcome.SENT})
        # per connection: EHLO, first envelope, one per message, QUIT
        self.assertEqual(proxy.turns, 60 + 2 * 3)
