"""
Error reports: errors this process logs are mailed to C{[admin] addresses},
at most one report per kind of error per C{[admin] report_interval}.

A log observer (installed on the global log publisher while the service
runs) looks at every event with a failure or a level of error or worse,
fingerprints it (the exception type and the file:function of its innermost
frames, or, without a traceback, the event's namespace and format string:
never the values, so "the same error" about different rows is one error)
and counts it in memory.  That is all it does: no I/O, nothing queued, no
logging, so an error storm costs a dictionary update per event.

A LoopingCall then queues the reports that are due through
L{Outbox.enqueue} (bare addresses, QoS C{transactional}: no
List-Unsubscribe): the number of occurrences since the last report, the
first and last time, and the traceback of the latest.

Reporting can never feed itself: events logged in this module's namespace
(a report that could not be queued) and events logged while a report is
being queued are not counted, and a fingerprint reported (or tried) waits a
whole interval before its next report, whatever happens meanwhile.

Counts live in this process only: they are lost at a restart, and with
several emaild processes each reports its own errors.
"""

from __future__ import annotations

import contextvars
import datetime
import hashlib
import os
import socket
from pathlib import PurePath
from typing import Any

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher

NAMESPACE = __name__
log = Logger(namespace=NAMESPACE)

TEMPLATE = "error_report"
QOS = "transactional"
#: innermost frames that make a fingerprint
FRAMES = 3
#: how often due reports are looked for
FLUSH_INTERVAL = 10.0
#: different errors tracked at once; more are counted together as one
MAX_FINGERPRINTS = 200
OVERFLOW = "overflow"
#: longest traceback put in a report
MAX_TRACEBACK = 20_000
#: after a report could not be queued, try again after at most this long
RETRY_AFTER = 300.0

_ERROR_LEVELS = frozenset({LogLevel.error, LogLevel.critical})

#: set while this process queues a report: anything logged then is not counted
_reporting: contextvars.ContextVar[bool] = contextvars.ContextVar("emaild_error_reporting",
                                                                  default=False)


def _where(filename: str, function: str) -> str:
    return f"{'/'.join(PurePath(filename).parts[-2:])}:{function}"


def fingerprint(event: dict) -> tuple[str, str]:
    """
    (fingerprint, one-line summary) of a log event.
    """
    failure = event.get("log_failure")
    if failure is not None and getattr(failure, "type", None) is not None:
        kind = f"{failure.type.__module__}.{failure.type.__qualname__}"
        frames = [_where(f[1], f[0]) for f in (failure.frames or [])[-FRAMES:]]
        if frames:
            key = f"{kind}|{'|'.join(frames)}"
            summary = f"{failure.type.__name__} in {frames[-1]}"
        else:  # no traceback: where it was logged tells errors apart
            key = f"{kind}|{event.get('log_namespace')}|{event.get('log_format')}"
            summary = f"{failure.type.__name__} ({event.get('log_namespace')})"
    else:
        fmt = event.get("log_format")
        if fmt is None:
            fmt = event.get("format", "") or ""
        key = f"{event.get('log_namespace')}|{fmt}"
        summary = f"{event.get('log_namespace')}: {' '.join(str(fmt).split())[:120]}"
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:16], summary


@attrs.define
class _Entry:
    fingerprint: str
    summary: str
    #: occurrences since the last report
    count: int = 0
    first: float | None = None
    last: float | None = None
    #: the latest occurrence's event
    event: dict | None = None
    #: no report before this time
    due_at: float = 0.0
    #: reports queued for it so far
    reports: int = 0


def _utc(when: float | None) -> str:
    if when is None:
        return ""
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")


def _describe(event: dict | None) -> tuple[str, str]:
    """(message, traceback) of an event, however odd it is."""
    if event is None:
        return "", ""
    try:
        message = formatEvent(event)
    except Exception as e:  # formatEvent mostly copes; be sure
        message = f"(could not format the message: {e!r})"
    traceback = ""
    failure = event.get("log_failure")
    if failure is not None:
        try:
            traceback = failure.getTraceback()
        except Exception as e:
            traceback = f"(could not format the traceback: {e!r})"
    if len(traceback) > MAX_TRACEBACK:
        traceback = "…\n" + traceback[-MAX_TRACEBACK:]
    return message, traceback


class ErrorReporter(service.Service):
    """
    @param clock: the reactor (its C{seconds} and C{callLater}).
    @param publisher: where to observe events (default: the global one).
    """

    name = "error-reports"

    def __init__(self, config, outbox, clock, publisher=None,
                 flush_interval: float = FLUSH_INTERVAL, max_fingerprints: int = MAX_FINGERPRINTS):
        self.addresses = tuple(config["admin"]["addresses"])
        self.interval = config["admin"]["report_interval"]
        self.outbox = outbox
        self.clock = clock
        self.publisher = publisher if publisher is not None else globalLogPublisher
        self.flush_interval = flush_interval
        self.max_fingerprints = max_fingerprints
        self.entries: dict[str, _Entry] = {}
        self.host = socket.gethostname()
        self._loop: task.LoopingCall | None = None
        self._flushing: defer.Deferred | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.addresses)

    # -- the observer: count, nothing else --------------------------------------
    def __call__(self, event: dict) -> None:
        try:
            if _reporting.get():
                return
            namespace = event.get("log_namespace") or ""
            if namespace == NAMESPACE or namespace.startswith(NAMESPACE + "."):
                return
            if event.get("log_failure") is None and event.get("log_level") not in _ERROR_LEVELS:
                return
            key, summary = fingerprint(event)
            entry = self.entries.get(key)
            if entry is None:
                if len(self.entries) >= self.max_fingerprints:
                    key, summary = OVERFLOW, "other errors (too many different ones to tell apart)"
                    entry = self.entries.get(key)
                if entry is None:
                    entry = self.entries[key] = _Entry(key, summary)
            now = self.clock.seconds()
            entry.count += 1
            if entry.first is None:
                entry.first = now
            entry.last = now
            entry.event = event
        except Exception:  # an observer that raises is removed: never raise
            pass

    # -- the service ------------------------------------------------------------
    def startService(self):  # noqa: N802
        super().startService()
        if not self.enabled:
            return
        self.publisher.addObserver(self)
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        self._loop.start(self.flush_interval, now=False)

    def stopService(self):  # noqa: N802
        """
        Stop observing and flushing, then queue the reports that are due
        (the database closes after this service stops).
        """
        super().stopService()
        if self.enabled:
            self.publisher.removeObserver(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return defer.ensureDeferred(self._last_flush())

    async def _last_flush(self) -> None:
        if self._flushing is not None and not self._flushing.called:
            waiting = defer.Deferred()
            self._flushing.addBoth(lambda result: waiting.callback(None) or result)
            await waiting
        if self.enabled:
            await self._tick()

    def _tick(self) -> defer.Deferred:
        # the LoopingCall waits for this (no overlapping flushes) and stops
        # for good if it fails: so it never does
        d = defer.ensureDeferred(self.flush())
        d.addErrback(lambda failure: log.failure("Error reports: flush failed", failure))
        self._flushing = d
        return d

    # -- reporting ----------------------------------------------------------------
    def due(self, now: float) -> list[_Entry]:
        return [e for e in self.entries.values() if e.count and now >= e.due_at]

    async def flush(self) -> int:
        """
        Queue every due report; fires with how many were queued.  A report
        that cannot be queued is logged (not counted) and tried again after
        C{RETRY_AFTER} or the report interval, whichever is shorter.
        """
        if not self.enabled:
            return 0
        now = self.clock.seconds()
        for key in [k for k, e in self.entries.items() if not e.count and now >= e.due_at]:
            del self.entries[key]  # quiet for a whole interval: forget it
        queued = 0
        for entry in self.due(now):
            count, first, last, event = entry.count, entry.first, entry.last, entry.event
            entry.count, entry.first, entry.last, entry.event = 0, None, None, None
            entry.due_at = now + self.interval
            context = self._context(entry, count, first, last, event)
            token = _reporting.set(True)
            try:
                await self.outbox.enqueue(
                    TEMPLATE, [(address, context) for address in self.addresses], qos=QOS,
                    batch=f"error-report:{entry.fingerprint}")
            except Exception:
                # put the occurrences back, and wait before trying again
                entry.count += count
                entry.first = first if entry.first is None else min(first, entry.first)
                entry.last = last if entry.last is None else max(last, entry.last)
                entry.event = entry.event or event
                entry.due_at = now + min(self.interval, RETRY_AFTER)
                log.failure("Could not queue the error report for {summary}",
                            summary=entry.summary)
            else:
                entry.reports += 1
                queued += 1
            finally:
                _reporting.reset(token)
        return queued

    def _context(self, entry: _Entry, count: int, first, last, event) -> dict[str, Any]:
        message, traceback = _describe(event)
        return {
            "fingerprint": entry.fingerprint, "summary": entry.summary, "count": count,
            "first": _utc(first), "last": _utc(last), "message": message,
            "traceback": traceback, "namespace": (event or {}).get("log_namespace", ""),
            "host": self.host, "pid": os.getpid(), "interval": _duration(self.interval),
            "previous_reports": entry.reports,
        }


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
