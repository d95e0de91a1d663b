"""
The replies an SMTP client session waits for: a FIFO (replies come back in
the order the commands went out) guarded by one timer, and the text of a
session's end.  L{emaild.outbound.smtpclient} composes them.

An entry never goes unanswered: it gets the relay's L{Reply}, or, when the
connection is lost or the timer fires, a L{Reply} whose C{code} is None and
whose text says what happened.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

from emaild.outbound.smtpwire import Reply

#: called with (argument, reply) once the reply is known
Handler = Callable[[Any, Reply], None]


def escape_format(text: str) -> str:
    """Protect text that goes into a str.format template."""
    return text.replace("{", "{{").replace("}", "}}")


class ReplyQueue:
    """
    One entry per reply awaited, in order.  One timer, for the reply at the
    head of the queue: with pipelining each reply gets its full timeout
    counted from the previous one.  C{on_timeout(step, timeout)} is called
    when the head's timeout passes (the session then drops the connection,
    which answers every entry through L{fail_all}).
    """

    def __init__(self, reactor, on_timeout: Callable[[str, float], None]):
        self.reactor = reactor
        self.on_timeout = on_timeout
        #: (step, timeout, handler, argument) per reply awaited
        self.entries: collections.deque = collections.deque()
        self.timer = None
        #: a handler is running: what it expects is timed once it returns
        self._answering = False

    def __len__(self) -> int:
        return len(self.entries)

    def expect(self, step: str, timeout: float, handler: Handler, argument) -> None:
        """Wait for one more reply; C{handler(argument, reply)} gets it."""
        self.entries.append((step, timeout, handler, argument))
        if len(self.entries) == 1 and not self._answering:
            self._arm()

    def answer(self, reply: Reply) -> bool:
        """Hand C{reply} to the oldest entry; False when none waits for it."""
        entries = self.entries
        if not entries:
            return False
        _, _, handler, argument = entries.popleft()
        # The timer is re-armed (reset) for the new head after the handler,
        # which often expects the next reply: one timer for the session
        # rather than a new one per message.
        self._answering = True
        try:
            handler(argument, reply)
        finally:
            self._answering = False
            if entries:
                self._arm()
            else:
                self.cancel_timer()
        return True

    def fail_all(self, template: str) -> None:
        """Answer every entry with no reply, C{template} naming its {step}."""
        self.cancel_timer()
        entries, self.entries = self.entries, collections.deque()
        for step, _, handler, argument in entries:
            handler(argument, Reply(None, (template.format(step=step),)))

    def _arm(self) -> None:
        timeout = self.entries[0][1]
        if self.timer is not None and self.timer.active():
            self.timer.reset(timeout)
        else:
            self.timer = self.reactor.callLater(timeout, self._timed_out)

    def cancel_timer(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.entries:
            step, timeout, _, _ = self.entries[0]
            self.on_timeout(step, timeout)


def describe_loss(reason, host: str, tls_started: bool, tls_done: bool) -> str:
    """
    What a lost connection means, as a template with {step}: a failed
    certificate check or TLS handshake, or a plain loss.
    """
    detail = escape_format(reason.getErrorMessage())
    if tls_started and not tls_done:
        if "VerificationError" in repr(reason.value):
            return (f"certificate check failed for relay {host}: the certificate"
                    f" is not valid for this host name ({detail})")
        if "certificate" in detail.lower():
            return f"certificate check failed for relay {host}: {detail}"
        return f"TLS handshake with relay {host} failed: {detail}"
    return "connection lost during {step}: " + detail
