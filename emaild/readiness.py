"""
Where one emaild process is in its life, for everything that answers the
outside world while it starts: C{/healthz} and the web routes (503), the
inbound SMTP server (421).

    starting ──▶ ready ──▶ stopping
        └──────▶ failed

The service tree moves it along (L{emaild.service}); the web app and the
SMTP server only read it.
"""

from __future__ import annotations

from twisted.internet import defer

STARTING = "starting"
READY = "ready"
STOPPING = "stopping"
FAILED = "failed"


class Readiness:
    """
    @ivar state: one of C{starting}, C{ready}, C{stopping}, C{failed}.
    @ivar step: what is happening now, in words (for C{/healthz} and logs).
    """

    #: what a client is told to wait, in seconds, before trying again
    retry_after = 5

    def __init__(self):
        self.state = STARTING
        self.step = "starting"
        self._waiting: list[defer.Deferred] = []

    def is_ready(self) -> bool:
        return self.state == READY

    def starting(self, step: str) -> None:
        self.step = step

    def mark_ready(self) -> None:
        self.state, self.step = READY, "running"
        self._fire(None)

    def mark_stopping(self) -> None:
        self.state, self.step = STOPPING, "stopping"
        self._fire(RuntimeError("emaild stopped before it was ready"))

    def mark_failed(self, reason: str) -> None:
        self.state, self.step = FAILED, reason
        self._fire(RuntimeError(f"emaild cannot start: {reason}"))

    def when_ready(self) -> defer.Deferred:
        """
        A new Deferred that fires when the process is ready (at once if it
        is), or fails when it stops or fails first.
        """
        if self.state == READY:
            return defer.succeed(None)
        if self.state == FAILED:
            return defer.fail(RuntimeError(f"emaild cannot start: {self.step}"))
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    def _fire(self, error: Exception | None) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)
