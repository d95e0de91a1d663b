"""
"X is active in your group": when a member shows up in a group (opens the
group page, or the JSON API reports them present), the other current
members who are not online themselves and have not turned the
C{notification} kind off get a mail with a sign-in link to the group page.

    await notifier.visited(group_id, person_id)   # after the visit is recorded

Limits (C{[notifications]}), enforced in the database so that they hold
however many page loads, requests at once and emaild processes there are:

- one notice per (actor, group) per C{active_window};
- at most C{daily_limit} notices per recipient per UTC day;
- "online" means a group page visit or a request in a signed-in session
  within C{online_window}.

C{visited} never raises: a failure is logged (and so reaches the error
reports) and the visit itself is unaffected.
"""

from __future__ import annotations

from typing import Callable

from twisted.logger import Logger

from emaild.groups.store import GroupStore
from emaild.notify.store import NotifyStore
from emaild.outbound.store import OutboxStore
from emaild.people.store import PeopleStore

log = Logger()

KIND = "notification"
TEMPLATE = "group_active"
#: (actor, group) pairs remembered as "notified recently" in this process
_RECENT_MAX = 10_000


class Notifier:
    """
    @param outbox: the L{emaild.outbound.outbox.Outbox}; without one
        (a web app built for tests without mail) visits notify nobody.
    @param clock: seconds since the epoch (C{reactor.seconds}); the windows
        and the day are measured on it.
    """

    def __init__(self, config, store: NotifyStore, groups: GroupStore, people: PeopleStore,
                 outbox, clock: Callable[[], float], *, outbox_store: OutboxStore,
                 session_store):
        section = config["notifications"]
        self.online_window = section["online_window"]
        self.active_window = section["active_window"]
        self.daily_limit = section["daily_limit"]
        self.outbox = outbox
        self.clock = clock
        self.store = store
        self.groups = groups
        self.people = people
        #: opt-outs (the outbound part's) and signed-in activity (the web's)
        self.outbox_store = outbox_store
        self.session_store = session_store
        #: (group, actor) pairs being handled now: a burst of page loads
        #: does the work once (the database enforces it across processes)
        self._running: set[tuple[int, int]] = set()
        #: (group, actor) -> when this process last queued a notice for it
        self._recent: dict[tuple[int, int], float] = {}

    @property
    def enabled(self) -> bool:
        return self.outbox is not None and self.daily_limit > 0

    async def visited(self, group_id: int, person_id: int) -> int:
        """
        C{person_id} is active in C{group_id} now: notify the others who
        should hear of it.  Fires with the number of mails queued (0 when
        it was a repeat, nobody was to be told, or something failed: the
        failure is logged, never raised).
        """
        if not self.enabled:
            return 0
        key = (group_id, person_id)
        now = self.clock()
        recent = self._recent.get(key)
        if key in self._running or (recent is not None and now - recent < self.active_window):
            return 0
        self._running.add(key)
        try:
            return await self._notify(group_id, person_id, now)
        except Exception:
            log.failure("Could not notify group {group} that person {person} is active",
                        group=group_id, person=person_id)
            return 0
        finally:
            self._running.discard(key)

    async def _notify(self, group_id: int, actor_id: int, now: float) -> int:
        group = await self.groups.get(group_id)
        actor = await self.groups.member(group_id, actor_id)
        if group is None or actor is None or not actor.live:
            return 0
        quiet = await self.groups.quiet_members(group_id, actor_id, self.online_window)
        if quiet:
            online = await self.session_store.seen_since(quiet, self.online_window)
            off = await self.outbox_store.opted_out(quiet, group.course_id, KIND)
            quiet = [p for p in quiet if p not in online and p not in off]
        if not quiet:
            return 0
        claimed = await self.store.claim(group_id, actor_id, quiet, now, self.active_window,
                                         self.daily_limit)
        if claimed is None:
            return 0
        notice_id, recipients = claimed
        self._remember(group_id, actor_id, now)
        context = {"actor": actor.display_name or "A member", "group": group.name,
                   "course": group.course_title, "group_path": f"/groups/{group_id}"}
        try:
            report = await self.outbox.enqueue_people(
                TEMPLATE, [(pid, context) for pid in recipients], kind=KIND,
                course_id=group.course_id, batch=f"notify:{notice_id}")
        except BaseException:
            # nothing was queued: the notice must not count against any limit
            await self.store.forget(notice_id)
            self._recent.pop((group_id, actor_id), None)
            raise
        if report.rejected:
            for rejected in report.rejected:
                log.warn("Activity notice {notice} not queued for person {person}: {reason}",
                         notice=notice_id, person=rejected.person_id, reason=rejected.reason)
            await self.store.forget(notice_id, [r.person_id for r in report.rejected
                                                if r.person_id is not None])
        return len(report.ids)

    def _remember(self, group_id: int, actor_id: int, now: float) -> None:
        if len(self._recent) >= _RECENT_MAX:
            self._recent = {k: t for k, t in self._recent.items()
                            if now - t < self.active_window}
            if len(self._recent) >= _RECENT_MAX:
                self._recent.clear()
        self._recent[(group_id, actor_id)] = now
