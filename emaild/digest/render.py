"""
Rendering weekly updates: one learner's context from their groups'
activity and the staff note, and queueing a chunk of them inside the
transaction that claimed them (the cursor-level twin of
L{Outbox.enqueue_people}: draft, mint the links, finish, insert).
"""

from __future__ import annotations

import datetime
from typing import Any, Mapping, Sequence

import attrs
import psycopg2
from markupsafe import escape

from emaild.digest.store import GroupActivity, Learner
from emaild.outbound.compose import ComposeError, Rendered, check_address
from emaild.outbound.kinds import get_kind
from emaild.outbound.store import insert_messages_txn

TEMPLATE = "digest"
KIND = "digest"


def _day(when: datetime.datetime) -> str:
    return f"{when:%a} {when.day} {when:%b %Y} {when:%H:%M} UTC"


@attrs.frozen
class WeekData:
    """
    What every learner's update for one (course, week) shares.
    """

    course_id: int
    course_title: str
    week: str
    start: datetime.datetime
    end: datetime.datetime
    note: str
    activity: Mapping[int, GroupActivity]
    #: the window as the templates show it (formatted once, not per learner)
    period_start: str = attrs.field(init=False)
    period_end: str = attrs.field(init=False)

    def __attrs_post_init__(self):
        object.__setattr__(self, "period_start", _day(self.start))
        object.__setattr__(self, "period_end", _day(self.end))


def context_for(learner: Learner, data: WeekData) -> dict[str, Any] | None:
    """
    The template context for one learner, or None when there is nothing to
    tell them (no activity in their groups and no staff note).
    """
    groups, anything = [], bool(data.note)
    for group_id in learner.group_ids:
        activity = data.activity.get(group_id)
        if activity is None:
            continue
        others = [name or "a new member" for pid, name in activity.new_members
                  if pid != learner.person_id]
        you_joined = any(pid == learner.person_id for pid, _ in activity.new_members)
        new_count = activity.new_member_count - (1 if you_joined else 0)
        quiet = not (activity.new_thread_count or activity.reply_count or new_count)
        anything = anything or not quiet
        groups.append({
            "id": group_id, "name": activity.name, "quiet": quiet,
            "new_threads": list(activity.new_threads),
            "new_thread_count": activity.new_thread_count,
            "reply_count": activity.reply_count,
            "active_threads": list(activity.active_threads),
            "new_members": others, "new_member_count": new_count, "you_joined": you_joined,
        })
    if not anything:
        return None
    return {"course_title": data.course_title, "week": data.week,
            "period_start": data.period_start, "period_end": data.period_end,
            "note": data.note, "groups": groups}


@attrs.frozen
class ChunkResult:
    #: (person id, outcome, outbox id) per claimed learner
    outcomes: list[tuple[int, str, int | None]]

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes if o[1] == outcome)


async def enqueue_chunk(cursor, outbox, learners: Sequence[Learner],
                        data: WeekData) -> ChunkResult:
    """
    Render and queue the update of every learner in C{learners} inside the
    caller's transaction.  Learners with nothing to report, without an
    address, or whose message cannot be made, are reported with the reason
    and get nothing.
    """
    config = outbox.config
    kind = get_kind(config, KIND)
    qos = config.qos_class(kind.qos)
    composer = outbox.composer
    composer.templates(TEMPLATE)
    outcomes: list[tuple[int, str, int | None]] = []
    drafts = []
    for learner in learners:
        context = context_for(learner, data)
        if context is None:
            outcomes.append((learner.person_id, "nothing", None))
            continue
        if not learner.email:
            outcomes.append((learner.person_id, "no-address", None))
            continue
        try:
            check_address(learner.email)
            drafts.append((learner.person_id, composer.draft(
                TEMPLATE, learner.email, context, person_id=learner.person_id,
                display_name=learner.display_name, kind=kind.name, course_id=data.course_id,
                unsubscribable=kind.unsubscribable)))
        except ComposeError as e:
            outcomes.append((learner.person_id, f"rejected: {e}"[:500], None))
    requests = [r for _, draft in drafts for r in draft.link_requests()]
    links = outbox.links
    rows = await links.store._mint_many(cursor, requests, links.clock()) if requests else []
    rendered: list[Rendered] = []
    owners: list[int] = []
    at = 0
    for person_id, draft in drafts:
        n = len(draft.requests) + (draft.unsubscribe is not None)
        try:
            rendered.append(composer.finish(draft, rows[at:at + n]))
            owners.append(person_id)
        except ComposeError as e:
            outcomes.append((person_id, f"rejected: {e}"[:500], None))
        at += n
    if rendered:
        ids = await insert_messages_txn(cursor, TEMPLATE, qos, rendered, None)
        outcomes.extend((pid, "queued", oid) for pid, oid in zip(owners, ids))
    return ChunkResult(outcomes)


def preview_text(outbox, learner: Learner, data: WeekData) -> tuple[str, str, str | None]:
    """
    (subject, text, html) of one learner's update, without minting links
    or queueing anything; links show as C{<your personal sign-in link>}.

    @raise ComposeError: nothing to report, no address, or the template fails.
    """
    context = context_for(learner, data)
    if context is None:
        raise ComposeError(f"nothing to tell person {learner.person_id} for {data.week}: "
                           "no activity in their groups and no note from the course team")
    if not learner.email:
        raise ComposeError(f"person {learner.person_id} has no e-mail address")
    kind = get_kind(outbox.config, KIND)
    draft = outbox.composer.draft(TEMPLATE, learner.email, context, person_id=learner.person_id,
                                  display_name=learner.display_name, kind=kind.name,
                                  course_id=data.course_id, unsubscribable=kind.unsubscribable)
    return fill_placeholders(draft)


def fill_placeholders(draft) -> tuple[str, str, str | None]:
    subject, text, html = draft.subject, draft.text, draft.html
    pairs = [(p, "<your personal sign-in link>") for p in draft.placeholders]
    if draft.unsubscribe is not None:
        pairs.append((draft.unsubscribe_placeholder, "<your unsubscribe link>"))
    for placeholder, shown in pairs:
        subject = subject.replace(placeholder, shown)
        text = text.replace(placeholder, shown)
        if html is not None:
            html = html.replace(placeholder, str(escape(shown)))
    return subject, text, html


def is_course_missing(error: Exception) -> bool:
    return isinstance(error, psycopg2.IntegrityError) and "course_id" in str(error)
