"""
A scripted transport for sender unit tests (the SMTP and maildir transports
have their own tests against real servers and files).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from zope.interface import implementer

from emaild.outbound.transport import DeliveryResult, IDeliveryTransport, Outcome, OutgoingMessage

SENT = DeliveryResult(Outcome.SENT, 250, "2.0.0 Ok: queued")


@implementer(IDeliveryTransport)
class ScriptedTransport:
    """
    Answers each delivery with C{script(message, attempt_number)} (a
    L{DeliveryResult}, or a Deferred of one); records what it saw.
    """

    name = "scripted"

    def __init__(self, clock, script: Callable[[OutgoingMessage, int], object] | None = None,
                 slots: int = 10):
        self.clock = clock
        self.script = script or (lambda message, n: SENT)
        self.slots = slots
        self.log: list[tuple[float, OutgoingMessage, DeliveryResult]] = []
        self.seen: dict[int, int] = {}
        self.in_flight = 0
        self.closed = False
        self.aborted = False
        self._pending: list[defer.Deferred] = []

    def deliver(self, message):
        self.seen[message.id] = self.seen.get(message.id, 0) + 1
        self.in_flight += 1
        d = defer.maybeDeferred(self.script, message, self.seen[message.id])
        self._pending.append(d)

        def done(result):
            self.in_flight -= 1
            self._pending.remove(d)
            self.log.append((self.clock.seconds(), message, result))
            return result

        return d.addCallback(done)

    def capacity(self):
        return 0 if self.closed else max(0, self.slots - self.in_flight)

    def close(self):
        self.closed = True
        return defer.DeferredList(list(self._pending))

    def abort(self):
        self.aborted = True
        for d in list(self._pending):
            if not d.called:
                d.callback(DeliveryResult(Outcome.RETRY, None, "aborted"))

    def sent_ids(self):
        return [m.id for _, m, r in self.log if r.outcome is Outcome.SENT]
