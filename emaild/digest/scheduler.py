"""
The weekly update: once per ISO week, at C{[digest] weekday} and
C{[digest] hour} (UTC), every learner of every course gets one message about
their groups' week and the course team's note.

Never twice: each learner is claimed in C{digest_sent} (unique per course,
week and person) in the same transaction that queues their message, so a
restart, a second emaild process on the same database, or
C{emaild digest --send-now} while the daemon runs, all find them taken.
Learners are handled C{[digest] chunk_size} at a time (one transaction
each), so memory does not grow with the course; a run that is stopped (or
crashes) half-way is finished by the next one.  A course's run is marked
finished once no learner is left to claim; later ticks skip it.

L{DigestScheduler} is the daemon's service: a LoopingCall that checks every
minute whether a week's update is due and never lets an exception stop it
(see docs/design.md, known traps: a LoopingCall stops for good after one).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Sequence

import attrs
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from emaild.digest import weeks
from emaild.digest.render import WeekData, enqueue_chunk, preview_text
from emaild.digest.store import DigestStore, claim_learners_txn, learners_txn, mark_sent_txn
from emaild.people.store import PeopleStore

log = Logger()


class DigestRunner:
    """
    Runs weekly updates (the scheduler, C{emaild digest --send-now} and the
    benchmark all use this).

    @param outbox: the L{emaild.outbound.outbox.Outbox} (its composer,
        links and config).
    @param db: the database, for the transactions that claim and queue a
        chunk of learners; C{store} and C{people}: the digest and people
        tables.
    """

    def __init__(self, config, db, outbox, store: DigestStore, people: PeopleStore,
                 chunk_size: int | None = None, clock: Callable[[], float] = time.time):
        self.config = config
        self.db = db
        self.outbox = outbox
        self.store = store
        self.people = people
        self.chunk_size = chunk_size or config["digest"]["chunk_size"]
        self.clock = clock
        self.weekday = config["digest"]["weekday"]
        self.hour = config["digest"]["hour"]

    def due_week(self) -> str | None:
        return weeks.due_week(self.clock(), self.weekday, self.hour)

    def current_week(self) -> str:
        return weeks.label_of(weeks.utc(self.clock()))

    async def week_data(self, course_id: int, week: str) -> WeekData:
        course = (await self.people.courses([course_id])).get(course_id)
        if course is None:
            raise LookupError(f"there is no course {course_id}")
        start, end = weeks.window(week, self.weekday, self.hour)
        activity = await self.store.group_activity(course_id, start, end)
        note = await self.store.note(course_id, week) or ""
        return WeekData(course_id, course.title or course.context_id, week, start, end, note,
                        activity)

    async def run_week(self, week: str, course_ids: Sequence[int] | None = None,
                       should_stop: Callable[[], bool] = lambda: False) -> dict[int, Counter]:
        """
        Run C{week}'s update for every course (or those in C{course_ids})
        not finished yet; {course id: outcome counts of this call}.
        """
        results = {}
        for course_id in await self.store.courses_to_run(week, course_ids):
            if should_stop():
                break
            results[course_id] = await self.run_course(course_id, week, should_stop)
        return results

    async def run_course(self, course_id: int, week: str,
                         should_stop: Callable[[], bool] = lambda: False) -> Counter:
        await self.store.start_run(course_id, week)
        data = await self.week_data(course_id, week)
        totals: Counter = Counter()
        started = time.monotonic()
        after = 0  # walk the course by person id; one last pass from the start at the end
        while not should_stop():
            result = await self.db.transaction(self._chunk, data, after)
            if result is None and after:
                after = 0  # anyone a concurrent run claimed and then rolled back
                continue
            if result is None:
                await self.store.finish_run(course_id, week)
                log.info("Weekly update {week} for course {course}: {totals} in {s:.1f}s",
                         week=week, course=course_id, totals=dict(totals),
                         s=time.monotonic() - started)
                break
            after = result.last
            totals.update(outcome.split(":", 1)[0] for _, outcome, _ in result.outcomes)
        return totals

    async def _chunk(self, cursor, data: WeekData, after: int):
        found = await claim_learners_txn(cursor, data.course_id, data.week, self.chunk_size, after)
        if found is None:
            return None
        claimed, last = found
        if not claimed:
            return _Chunk([], last)
        people = await learners_txn(cursor, data.course_id, claimed)
        result = await enqueue_chunk(cursor, self.outbox, people, data)
        await mark_sent_txn(cursor, data.course_id, data.week, result.outcomes)
        return _Chunk(result.outcomes, last)

    async def preview(self, person_id: int, course_id: int, week: str):
        """
        (subject, text, html) of one learner's update for C{week}; nothing
        is claimed, minted or queued.
        """
        data = await self.week_data(course_id, week)
        found = await self.db.transaction(learners_txn, course_id, [person_id])
        if not found:
            raise LookupError(f"there is no person {person_id}")
        return preview_text(self.outbox, found[0], data)


@attrs.frozen
class _Chunk:
    #: (person id, outcome, outbox id) per learner claimed
    outcomes: list
    #: the highest person id looked at
    last: int


class DigestScheduler(service.Service):
    """
    Checks every C{interval} seconds whether this week's update is due and
    runs it for the courses that have not had it.
    """

    name = "digest"
    interval = 60.0

    def __init__(self, reactor, runner: DigestRunner):
        self.reactor = reactor
        self.runner = runner
        self._loop: task.LoopingCall | None = None
        self._running: defer.Deferred | None = None
        self._stopping = False
        self.last_error: str | None = None
        self.last_week: str | None = None

    def startService(self):  # noqa: N802
        super().startService()
        self._stopping = False
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def tick(self) -> defer.Deferred | None:
        """
        Start a check unless one is still running; errors are logged, never
        raised into the LoopingCall.
        """
        if self._running is not None or self._stopping:
            return None
        d = defer.ensureDeferred(self.run_due())
        self._running = d

        def failed(failure):
            self.last_error = failure.getErrorMessage()
            log.failure("Weekly update check failed; trying again in {s}s", failure,
                        s=self.interval)

        def done(_):
            self._running = None

        d.addCallbacks(lambda _: setattr(self, "last_error", None), failed)
        d.addBoth(done)
        return None

    async def run_due(self) -> dict:
        week = self.runner.due_week()
        if week is None:
            return {}
        results = await self.runner.run_week(week, should_stop=lambda: self._stopping)
        self.last_week = week
        return results

    def stopService(self):  # noqa: N802
        """
        Stop ticking; a run in progress stops after its current chunk.
        """
        super().stopService()
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        running = self._running
        if running is None:
            return defer.succeed(None)
        waiter = defer.Deferred()
        running.addBoth(lambda r: (waiter.callback(None), r)[1])
        return waiter

    def health(self) -> dict:
        state = "ok" if self.last_error is None else "error"
        health = {"state": state, "running": self._running is not None}
        if self.last_week:
            health["last_week"] = self.last_week
        if self.last_error:
            health["error"] = self.last_error
        return health
