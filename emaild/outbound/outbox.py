"""
The outbox as the rest of emaild sees it: render a template for each
recipient and queue the results.  (The CLI, the web app and the API all
enqueue through here.)

    await outbox.enqueue("plain", [("a@example.org", {...})])          # bare addresses
    await outbox.enqueue_people("announcement", [(12, {...}), (13, {...})],
                                kind="announcement", course_id=3)     # people
    await outbox.unsubscribe(link_row, "kind", source="mailto")       # an opt-out
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import attrs
import psycopg2

from emaild.config import QoSClass
from emaild.links.service import UNSUBSCRIBE, Links
from emaild.links.store import LinkRow
from emaild.outbound.compose import ComposeError, Composer, Rendered, check_address
from emaild.outbound.kinds import KindError, Scope, get_kind, parse_target
from emaild.outbound.store import OutboxStore
from emaild.people.store import PeopleStore
from emaild.templating import environment


@attrs.frozen
class Rejected:
    #: position in the input (0-based; the CLI adds the CSV line)
    index: int
    recipient: str
    reason: str
    #: for mail to people: whom the row was for
    person_id: int | None = None


@attrs.frozen
class EnqueueReport:
    ids: list[int]
    rejected: list[Rejected]


def make_composer(config, **kwargs) -> Composer:
    site_url = config["http"]["public_url"]
    return Composer(
        environment(config["templates"]["dir"], "email"),
        relay_domain=config["smtp"]["relay_domain"],
        from_address=config.from_address,
        from_name=config["mail"]["from_name"],
        globals_={"site_url": site_url, "preferences_url": f"{site_url}/preferences"},
        **kwargs,
    )


#: unsubscribe choices: the link's own scope, or all mail from its course
CHOICES = ("kind", "course")


def _person_id(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


class Outbox:
    """
    @param store: the outbox table.
    @param links: the links service (minting for C{link()} and unsubscribe
        links).
    @param people: the people store (current addresses).
    @param composer: renders the templates; its links are C{links}.
    """

    def __init__(self, config, store: OutboxStore, *, links: Links, people: PeopleStore,
                 composer: Composer):
        self.config = config
        self.store = store
        self.links = links
        self.people = people
        self.composer = composer

    async def enqueue(
        self,
        template: str,
        recipients: Iterable[tuple[str, Mapping[str, Any]]],
        qos: str | None = None,
        batch: str | None = None,
    ) -> EnqueueReport:
        """
        Render C{template} for every (address, context) and queue the ones
        that rendered, in one transaction.  Those that did not are returned
        with the reason; nothing is queued for them.

        @raise ComposeError: the template itself is missing or broken, or
            C{qos} names no configured class (nothing is queued).
        """
        qos_class = self.check(template, qos)
        rendered, rejected = self.render_many(template, recipients)
        ids = await self.store.enqueue(template, qos_class, rendered, batch) if rendered else []
        return EnqueueReport(ids, rejected)

    def check(self, template: str, qos: str | None = None) -> QoSClass:
        """
        The QoS class C{qos} names (None: the default), once C{template}
        loads.

        @raise ComposeError: the template is missing or broken, or C{qos}
            names no configured class.
        """
        if qos is not None and qos not in self.config.qos:
            raise ComposeError(f"no QoS class {qos!r}; configured: {', '.join(sorted(self.config.qos))}")
        qos_class = self.config.qos_class(qos)
        self.composer.templates(template)  # fail once, early, for a bad template
        return qos_class

    def render_many(self, template: str, recipients: Iterable[tuple[str, Mapping[str, Any]]],
                    first_index: int = 0) -> tuple[list[Rendered], list[Rejected]]:
        """
        Render C{template} for every (address, context) to a bare address;
        the ones that cannot be rendered are returned with the reason
        (their C{index} counts from C{first_index}).
        """
        render = self.composer.render
        rendered, rejected = [], []
        for index, (address, context) in enumerate(recipients, first_index):
            try:
                rendered.append(render(template, address, context))
            except ComposeError as e:
                rejected.append(Rejected(index, str(address), str(e)))
        return rendered, rejected

    async def enqueue_people(
        self,
        template: str,
        recipients: Iterable[tuple[int, Mapping[str, Any]]],
        *,
        kind: str,
        course_id: int | None = None,
        qos: str | None = None,
        batch: str | None = None,
    ) -> EnqueueReport:
        """
        Render C{template} for every (person id, context) to the person's
        current address (looked up now) and queue the ones that rendered, in
        one transaction.  Links the templates ask for (C{link()}) and, for
        an unsubscribable C{kind}, the unsubscribe links are minted in one
        go for the whole call.  People without an address, unknown people
        and bad link targets are returned with the reason.

        Templates also see C{person_id}, C{name} (the person's display name
        unless the context has one), C{unsubscribe_url} ('' for
        transactional kinds) and C{preferences_url}.

        @param kind: a configured kind (C{[kinds.<name>]}); it decides
            whether the mail carries List-Unsubscribe and is subject to
            opt-outs, and its QoS class unless C{qos} names one.
        @param course_id: the course the mail is about (the opt-out scope),
            or None.
        @raise ComposeError: unknown kind, QoS class, course or template
            (nothing is queued).
        """
        try:
            mail_kind = get_kind(self.config, kind)
        except KindError as e:
            raise ComposeError(str(e)) from None
        qos = qos or mail_kind.qos
        if qos not in self.config.qos:
            raise ComposeError(f"no QoS class {qos!r}; configured: {', '.join(sorted(self.config.qos))}")
        if course_id is not None and _person_id(course_id) is None:
            raise ComposeError(f"course_id must be a positive whole number, got {course_id!r}")
        qos_class = self.config.qos_class(qos)
        self.composer.templates(template)
        recipients = list(recipients)
        people = await self.people.get_many(
            pid for pid, _ in recipients if _person_id(pid) is not None)

        drafts, rejected = [], []
        for index, (person_id, context) in enumerate(recipients):
            person = people.get(person_id) if _person_id(person_id) is not None else None
            if person is None:
                rejected.append(Rejected(index, "", f"there is no person {person_id!r}",
                                         _person_id(person_id)))
                continue
            if not person.email:
                rejected.append(Rejected(index, "", f"person {person.id} has no e-mail address",
                                         person.id))
                continue
            try:
                check_address(person.email)
                drafts.append((index, self.composer.draft(
                    template, person.email, context, person_id=person.id,
                    display_name=person.display_name, kind=mail_kind.name,
                    course_id=course_id, unsubscribable=mail_kind.unsubscribable)))
            except ComposeError as e:
                rejected.append(Rejected(index, person.email, str(e), person.id))

        requests = [r for _, draft in drafts for r in draft.link_requests()]
        rows = await self.links.mint_many(requests) if requests else []
        rendered, at = [], 0
        for index, draft in drafts:
            n = len(draft.requests) + (draft.unsubscribe is not None)
            try:
                rendered.append(self.composer.finish(draft, rows[at:at + n]))
            except ComposeError as e:
                rejected.append(Rejected(index, draft.recipient, str(e), draft.person_id))
            at += n
        rejected.sort(key=lambda r: r.index)
        if not rendered:
            return EnqueueReport([], rejected)
        try:
            ids = await self.store.enqueue(template, qos_class, rendered, batch)
        except psycopg2.IntegrityError as e:
            if course_id is not None and "course_id" in str(e):
                raise ComposeError(f"there is no course {course_id}") from None
            raise
        return EnqueueReport(ids, rejected)

    # -- opting out ------------------------------------------------------------
    @staticmethod
    def scope_of(link: LinkRow, choice: str = "kind") -> Scope:
        """
        What an unsubscribe link turns off: its own scope (C{"kind"}: this
        kind of mail, in the mail's course), or all mail from that course
        (C{"course"}).

        @raise KindError: not an unsubscribe link, or a bad choice.
        """
        if link.purpose != UNSUBSCRIBE:
            raise KindError(f"link {link.id} is a {link.purpose} link, not an unsubscribe link")
        if choice not in CHOICES:
            raise KindError(f"unsubscribe choice must be one of {', '.join(CHOICES)}, got {choice!r}")
        scope = parse_target(link.target)
        return scope if choice == "kind" else scope.broaden_to_course()

    async def unsubscribe(self, link: LinkRow, choice: str = "kind", source: str = "web") -> Scope:
        """
        Record the opt-out an unsubscribe link asks for (see L{scope_of});
        C{source} says how (C{web}, C{one-click}, C{mailto}).  Doing it twice
        is harmless.  Fires with the scope.
        """
        scope = self.scope_of(link, choice)
        await self.store.add_optout(link.person_id, scope, source)
        return scope
