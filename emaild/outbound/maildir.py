"""
The C{maildir} transport, the zero-config default: every message becomes a
file in C{<state_dir>/outbox/new} that any mail client can open.

Files are written in C{tmp/}, fsynced, then renamed into C{new/} (the Maildir
delivery protocol), so a reader never sees half a message and a crash never
leaves one.  The writes run in a thread so the reactor keeps serving.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from twisted.internet import defer, threads
from zope.interface import implementer

from emaild.outbound.transport import DeliveryResult, IDeliveryTransport, Outcome, OutgoingMessage


def ensure_maildir(path: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


@implementer(IDeliveryTransport)
class MaildirTransport:
    name = "maildir"

    def __init__(self, reactor, path: Path, concurrency: int = 4):
        self.reactor = reactor
        # the folders are made on first delivery, by the user we then run as
        self.path = Path(path)
        self._made = False
        self.concurrency = concurrency
        self._hostname = socket.gethostname().replace("/", "_").replace(":", "_")
        self._in_flight: set[defer.Deferred] = set()
        self._closing = False

    def _write(self, message: OutgoingMessage) -> str:
        if not self._made:
            ensure_maildir(self.path)
            self._made = True
        # unique per the Maildir spec: time, pid and our row id, host
        name = f"{time.time():.6f}.P{os.getpid()}Q{message.id}.{self._hostname}"
        tmp = self.path / "tmp" / name
        data = message.data.replace(b"\r\n", b"\n")
        envelope = (
            f"Return-Path: <{message.sender}>\nDelivered-To: {message.recipient}\n"
        ).encode("ascii")
        with open(tmp, "wb") as f:
            f.write(envelope)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.path / "new" / name)
        return name

    def deliver(self, message: OutgoingMessage) -> defer.Deferred:
        if self._closing:
            return defer.succeed(DeliveryResult(Outcome.RETRY, None, "transport closing"))
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(),
                                      self._write, message)
        d.addCallbacks(
            lambda name: DeliveryResult(Outcome.SENT, None, f"written to {name}"),
            lambda f: DeliveryResult(Outcome.RETRY, None, f"cannot write to the maildir: {f.value}"),
        )
        self._in_flight.add(d)
        d.addBoth(self._done, d)
        return d

    def _done(self, result, d):
        self._in_flight.discard(d)
        return result

    def capacity(self) -> int:
        return 0 if self._closing else max(0, self.concurrency - len(self._in_flight))

    def close(self) -> defer.Deferred:
        self._closing = True
        return defer.DeferredList(list(self._in_flight)).addCallback(lambda _: None)

    def abort(self) -> None:
        # a file write cannot be interrupted; close() already waits for them
        self._closing = True
