"""
In-flow control: the inbound SMTP server slows down new mail while the
relay processor is behind, as a production MTA does (Postfix's
C{in_flow_delay}), so that a burst cannot pile up an unbounded backlog of
posts waiting to be relayed.

The relay processor says how many received rows wait after each batch
(L{InFlow.update}); every new transaction the server admits since counts
as one more.  Below C{[smtp] in_flow_backlog} rows a new transaction
(C{MAIL FROM}) is answered at once.  Above it, the reply waits: the delay
grows with the backlog, up to C{[smtp] in_flow_delay} at
C{[smtp] in_flow_refuse} rows, and above that the server answers C{451
4.3.2} (try again later: the sending MTA keeps the message and retries).
Mail already in a transaction is never refused for this.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.logger import Logger

from emaild.inbound.interfaces import Refused

log = Logger()


class InFlow:
    """
    @param backlog: rows waiting above which new transactions are delayed
        (0: never)
    @param max_delay: the longest delay, in seconds
    @param refuse: rows waiting above which new transactions get 451 (0: never)
    """

    def __init__(self, reactor, *, backlog: int, max_delay: float, refuse: int):
        if refuse and backlog and refuse <= backlog:
            raise ValueError("the refusal bound must be above the delay bound")
        self.reactor = reactor
        self.delay_above = backlog
        self.max_delay = max_delay
        self.refuse_above = refuse
        #: rows waiting when the processor last looked, and transactions
        #: admitted since
        self.reported = 0
        self.admitted = 0
        #: transactions delayed and refused so far
        self.delayed = 0
        self.refused = 0

    @property
    def backlog(self) -> int:
        """Rows waiting for the relay processor, as far as this process knows."""
        return self.reported + self.admitted

    def update(self, waiting: int) -> None:
        """The relay processor saw C{waiting} rows left after a batch."""
        self.reported, self.admitted = max(waiting, 0), 0

    def delay(self) -> float | None:
        """
        Seconds to wait before admitting a new transaction now (0: at
        once), or None when it must be refused.
        """
        backlog = self.backlog
        if self.refuse_above and backlog > self.refuse_above:
            return None
        if not self.delay_above or backlog <= self.delay_above:
            return 0.0
        if not self.refuse_above:
            return self.max_delay
        share = (backlog - self.delay_above) / (self.refuse_above - self.delay_above)
        return self.max_delay * min(share, 1.0)

    def admit(self) -> defer.Deferred | None:
        """
        None: admit the new transaction at once.  Otherwise a Deferred that
        fires when it may be admitted, or fails with L{Refused} (451 4.3.2).
        """
        delay = self.delay()
        if delay is None:
            self.refused += 1
            return defer.fail(Refused(451, "4.3.2", "Too much mail waiting to be relayed, "
                                                   "try again later"))
        self.admitted += 1
        if not delay:
            return None
        self.delayed += 1
        return task.deferLater(self.reactor, delay, lambda: None)


def admission(inflow: InFlow | None) -> defer.Deferred | None:
    """L{InFlow.admit} of the server's in-flow control, if it has one."""
    return None if inflow is None else inflow.admit()
