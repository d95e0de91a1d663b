"""
Announcements: staff send a template to a course, a group, or a list of
people, each message rendered for its recipient (their name, their own
sign-in links via C{link()}, any per-recipient values), queued under a
batch label that names the announcement.

The Python API (the CLI, the staff pages and the JSON API use it), from
the HomeServer's C{get_announcements()}::

    label = await announcements.announce("announcement", course_id=3,
                                         context={"body": "..."}, subject="Week 2")
    counts = await announcements.progress(label)   # {"queued": n, ..., "total": n}
    result = await announcements.resend_failed(label)   # result.label

Re-sending: C{resend_failed} queues new messages, under the label
C{<label>-resend<N>}, for exactly the people whose message in C{<label>}
failed (and whom no earlier re-send reached); the failed rows stay as they
were, so the failure and its reply remain visible.
"""

from __future__ import annotations

import datetime
import secrets
from typing import Any, Iterable, Mapping, Sequence

import attrs

from emaild.digest.store import DigestStore
from emaild.groups.store import GroupStore
from emaild.outbound.compose import ComposeError
from emaild.outbound.outbox import Rejected
from emaild.outbound.stats import queue_summary
from emaild.outbound.store import STATES, OutboxStore
from emaild.people.store import PeopleStore

#: people per Outbox.enqueue_people call (one transaction each)
CHUNK = 500
KIND = "announcement"


class AnnounceError(ValueError):
    """
    The announcement cannot be sent as asked (no audience, unknown course or
    group, bad template, unknown label); the message says why.
    """


@attrs.frozen
class AnnounceResult:
    label: str
    queued: int
    rejected: list[Rejected]


def new_label(now: float | None = None) -> str:
    when = datetime.datetime.fromtimestamp(
        now if now is not None else datetime.datetime.now().timestamp(), datetime.timezone.utc)
    return f"ann-{when:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


async def _chunks_of_members(store: DigestStore, course_id, group_id):
    after = 0
    while True:
        ids = await store.member_ids(course_id=course_id, group_id=group_id, after=after,
                                     limit=CHUNK)
        if not ids:
            return
        yield [(pid, {}) for pid in ids]
        after = ids[-1]


async def _chunks_of_list(recipients: Sequence[tuple[int, Mapping[str, Any]]]):
    for at in range(0, len(recipients), CHUNK):
        yield list(recipients[at:at + CHUNK])


@attrs.frozen
class Preview:
    #: how many people it would go to, and the one it was rendered for
    recipients: int
    person_id: int
    recipient: str
    subject: str
    text: str
    html: str | None


class Announcements:
    """
    Announcements of one process: queued through C{outbox}, recorded in the
    digest part's tables (C{store}), audiences from C{groups} and C{people},
    progress and failures read from the outbound part's C{outbox_store}.
    """

    def __init__(self, outbox, store: DigestStore, groups: GroupStore, people: PeopleStore,
                 outbox_store: OutboxStore):
        self.outbox = outbox
        self.outbox_store = outbox_store
        self.store = store
        self.groups = groups
        self.people = people

    async def send(
        self,
        template: str,
        *,
        course_id: int | None = None,
        group_id: int | None = None,
        person_ids: Iterable[int] | None = None,
        recipients: Sequence[tuple[int, Mapping[str, Any]]] | None = None,
        context: Mapping[str, Any] | None = None,
        subject: str | None = None,
        created_by: int | None = None,
        label: str | None = None,
        kind: str = KIND,
        resend_of: str | None = None,
    ) -> AnnounceResult:
        """
        Queue C{template} for the audience: every current member of
        C{group_id}, else the people in C{person_ids} / C{recipients} ((person
        id, their own template values) pairs), else every member of
        C{course_id}.  With a list of people, C{course_id} is only the course
        the mail is about (what an unsubscribe turns off).

        Templates see the shared C{context}, then the recipient's own values,
        C{subject} (when given), C{course_title} and C{group_name}, and
        everything L{Outbox.enqueue_people} adds (C{name}, C{link()},
        C{unsubscribe_url}).

        @raise AnnounceError: no audience, unknown course or group, a bad
            template or kind (nothing is queued).
        """
        outbox, store, people = self.outbox, self.store, self.people
        listed = recipients is not None or person_ids is not None
        if group_id is None and not listed and course_id is None:
            raise AnnounceError("say whom to send it to: a course, a group or a list of people")
        try:
            outbox.composer.templates(template)
        except ComposeError as e:
            raise AnnounceError(str(e)) from None
        shared: dict[str, Any] = dict(context or {})
        group_name = ""
        if group_id is not None:
            group = await self.groups.get(group_id)
            if group is None:
                raise AnnounceError(f"there is no group {group_id}")
            course_id, group_name = group.course_id, group.name
        course_title = ""
        if course_id is not None:
            course = (await people.courses([course_id])).get(course_id)
            if course is None:
                raise AnnounceError(f"there is no course {course_id}")
            course_title = course.title or course.context_id
        shared.setdefault("course_title", course_title or "the course")
        shared.setdefault("group_name", group_name)
        if subject is not None:
            shared["subject"] = subject
        if recipients is None and person_ids is not None:
            recipients = [(pid, {}) for pid in person_ids]
        duplicates: list[Rejected] = []
        if recipients is not None:  # one message per person: the first listing wins
            seen: set = set()
            unique, positions = [], []
            for index, (pid, values) in enumerate(recipients):
                if pid in seen:
                    duplicates.append(Rejected(index, "", f"person {pid} is listed twice", pid))
                else:
                    seen.add(pid)
                    unique.append((pid, values))
                    positions.append(index)
            recipients = unique
        audience = (f"group {group_id} ({group_name})" if group_id is not None
                    else f"{len(recipients)} people" if recipients is not None
                    else f"course {course_id} ({course_title})")
        label = label or new_label()
        await store.create_announcement(label, template, course_id=course_id, group_id=group_id,
                                        audience=audience, context=shared, created_by=created_by,
                                        resend_of=resend_of)
        chunks = (_chunks_of_list(recipients) if recipients is not None
                  else _chunks_of_members(store, None if group_id is not None else course_id,
                                          group_id))
        queued, rejected, offset = 0, list(duplicates), 0
        async for chunk in chunks:
            own = [(pid, dict(values)) for pid, values in chunk if values]
            if own:
                await store.save_contexts(label, own)
            try:
                report = await outbox.enqueue_people(
                    template, [(pid, {**shared, **values}) for pid, values in chunk],
                    kind=kind, course_id=course_id, batch=label)
            except ComposeError as e:
                raise AnnounceError(str(e)) from None
            queued += len(report.ids)
            rejected.extend(
                attrs.evolve(r, index=positions[r.index + offset] if recipients is not None
                             else r.index + offset)
                for r in report.rejected)
            offset += len(chunk)
        rejected.sort(key=lambda r: r.index)
        await store.finish_announcement(label, len(rejected))
        return AnnounceResult(label, queued, rejected)


    async def preview(self, template: str, *, course_id: int | None = None,
                      group_id: int | None = None, context: Mapping[str, Any] | None = None,
                      subject: str | None = None) -> Preview:
        """
        The announcement as its first recipient (lowest person id) would get
        it, rendered but not queued (no links are minted: they show as
        C{<your personal sign-in link>}).

        @raise AnnounceError: no audience, nobody in it, or it cannot be
            rendered for them (the reason).
        """
        from emaild.digest.render import fill_placeholders
        from emaild.outbound.kinds import get_kind

        outbox, store = self.outbox, self.store
        shared: dict[str, Any] = dict(context or {})
        if group_id is not None:
            group = await self.groups.get(group_id)
            if group is None:
                raise AnnounceError(f"there is no group {group_id}")
            course_id = group.course_id
            shared.setdefault("group_name", group.name)
        if course_id is None:
            raise AnnounceError("say whom to send it to: a course or a group")
        course = (await self.people.courses([course_id])).get(course_id)
        if course is None:
            raise AnnounceError(f"there is no course {course_id}")
        shared.setdefault("course_title", course.title or course.context_id)
        shared.setdefault("group_name", "")
        if subject is not None:
            shared["subject"] = subject
        who = dict(course_id=None if group_id is not None else course_id, group_id=group_id)
        count = await store.count_members(**who)
        first = await store.member_ids(**who, limit=1)
        if not first:
            raise AnnounceError("nobody would get it: there are no members")
        person = await self.people.get(first[0])
        if not person.email:
            raise AnnounceError(f"the first recipient ({person.display_name or person.id}) "
                                "has no e-mail address")
        kind = get_kind(outbox.config, KIND)
        try:
            draft = outbox.composer.draft(template, person.email, shared, person_id=person.id,
                                          display_name=person.display_name, kind=kind.name,
                                          course_id=course_id, unsubscribable=kind.unsubscribable)
        except ComposeError as e:
            raise AnnounceError(str(e)) from None
        subject_text, text, html = fill_placeholders(draft)
        return Preview(count, person.id, person.email, subject_text, text, html)


    async def announce(self, template: str, **kwargs) -> str:
        """
        L{send}, firing with just the batch label.
        """
        return (await self.send(template, **kwargs)).label


    async def progress(self, label: str) -> dict[str, int]:
        """
        How far the announcement C{label} got: C{{"queued", "sending", "sent",
        "failed", "suppressed", "total", "rejected"}} (counts of its outbox
        rows by state; C{rejected}: recipients never queued).  Re-sends have
        labels of their own.

        @raise AnnounceError: no announcement has that label.
        """
        store = self.store
        found = await store.announcement(label)
        if found is None:
            raise AnnounceError(f"no announcement {label!r}")
        summary = queue_summary(await self.outbox_store.batch_counts(label))
        counts = {state: summary[state] for state in STATES}
        counts["total"] = summary["total"]
        counts["rejected"] = found.rejected
        return counts


    async def status(self, label: str, failures: int = 50) -> dict:
        """
        L{progress} and more: what it was, when, its re-sends, and its failed
        messages with their last reply.
        """
        store = self.store
        found = await store.announcement(label)
        if found is None:
            raise AnnounceError(f"no announcement {label!r}")
        return {
            "label": label, "template": found.template, "audience": found.audience,
            "course_id": found.course_id, "group_id": found.group_id,
            "created_at": found.created_at.isoformat(), "resend_of": found.resend_of,
            "resends": await store.resends(label),
            "counts": await self.progress(label),
            "failures": [
                {"outbox_id": f.outbox_id, "person_id": f.person_id, "recipient": f.recipient,
                 "attempts": f.attempts, "reason": f.reason,
                 "finished_at": f.finished_at.isoformat() if f.finished_at else None,
                 "last_reply": f.last_reply}
                for f in await self.outbox_store.batch_failures(label, failures)],
        }


    async def resend_failed(self, label: str, created_by: int | None = None) -> AnnounceResult:
        """
        Queue the announcement again for the people whose message in C{label}
        failed, under C{<label>-resend<N>}; nobody else is touched.

        @raise AnnounceError: unknown label, or nothing failed.
        """
        store = self.store
        found = await store.announcement(label)
        if found is None:
            raise AnnounceError(f"no announcement {label!r}")
        resends = await store.resends(label)
        failed = await self.outbox_store.failed_people(label, resends)
        if not failed:
            raise AnnounceError(f"announcement {label!r} has no failed recipients to send again")
        own = await store.contexts(label, failed)
        number = len(resends) + 1
        return await self.send(
            found.template, course_id=found.course_id,
            recipients=[(pid, own.get(pid, {})) for pid in failed],
            context=found.context, created_by=created_by, label=f"{label}-resend{number}",
            resend_of=label)
