"""
The JSON API, C{/api/v1}: for the course's own systems and staff scripts.

Every call but C{GET /api/v1/openapi.json} needs C{Authorization: Bearer
<token>} with one of C{[api] tokens}; none configured means the API is off
(C{403}).  The OpenAPI document (L{emaild.web.api_openapi}) describes each
call, its answers and its errors; C{docs/api.md} is the short guide.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from emaild.outbound.compose import ComposeError, check_address
from emaild.outbound.stats import finished, pending, queue_report, queue_summary
from emaild.outbound.store import OutboxStore
from emaild.people.store import PersonError
from emaild.web.api_openapi import document
from emaild.web.api_support import (
    PREFIX,
    ApiError,
    Fields,
    answer,
    not_found,
    path_id,
    query_arg,
    read_json,
    resource,
)
from emaild.web.routing import Routes

if TYPE_CHECKING:
    from emaild.web.app import WebApp

routes = Routes()
register = routes.register

#: recipients one POST /messages may name (the body limit applies too)
MAX_RECIPIENTS = 10000
TEMPLATE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"


def _iso(when) -> str | None:
    if when is None:
        return None
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _outbox(self: WebApp) -> OutboxStore:
    return self.outbox.store


# -- people -------------------------------------------------------------------------
async def _person_json(self: WebApp, person) -> dict:
    courses = await self.people.courses_of(person.id)
    groups = await self.people.groups_of(person.id)
    return {"id": person.id, "email": person.email, "name": person.display_name,
            "courses": [{"id": c.course_id, "title": c.title, "roles": c.roles} for c in courses],
            "groups": [{"id": g.group_id, "name": g.name, "course": g.course_title}
                       for g in groups]}


async def upsert_person(self: WebApp, request):
    fields = Fields(read_json(self.config, request), ("email", "name", "course", "roles"))
    email = fields.string("email", max_length=254)
    try:
        check_address(email)
    except ComposeError as e:
        raise fields.bad("email", str(e)) from None
    name = fields.string("name", required=False, default="")
    course = fields.string("course", required=False, max_length=255)
    roles = fields.strings("roles")
    if roles and not course:
        raise fields.bad("roles", "needs a course: roles are per course")
    try:
        person, created, course_row = await self.people.add_person(email, name, course)
    except PersonError as e:
        raise fields.bad("course", str(e)) from None
    if roles and course_row is not None:
        await self.people.join_course(course_row.id, person.id, roles)
    return answer(request, 201 if created else 200, await _person_json(self, person))


async def get_person(self: WebApp, request, person_id: int):
    person = await self.people.get(path_id(person_id, "person"))
    if person is None:
        raise not_found(f"there is no person {person_id}")
    return answer(request, 200, await _person_json(self, person))


# -- groups -------------------------------------------------------------------------
def _group_json(group, members: int) -> dict:
    return {"id": group.id, "name": group.name, "course_id": group.course_id,
            "course": group.course_title, "members": members}


async def create_group(self: WebApp, request):
    fields = Fields(read_json(self.config, request), ("course", "name"))
    course = fields.string("course", max_length=255)
    name = fields.string("name", max_length=200)
    try:
        _, group_id, created = await self.hs.get_memberships().add_group(course, name)
    except PersonError as e:
        raise fields.bad("course", str(e)) from None
    group = await self.groups.get(group_id)
    members = len(await self.groups.members(group_id))
    return answer(request, 201 if created else 200, _group_json(group, members))


async def list_groups(self: WebApp, request):
    course = query_arg(request, "course")
    if course is None:
        found = await self.groups.list()
    else:
        found = []
        for row in await self.people.find_courses(course):
            found += await self.groups.list(row.id)
    return answer(request, 200, {"groups": [_group_json(g, n) for g, n in found]})


async def _group_and_person(self: WebApp, group_id: int, person_id: int):
    group = await self.groups.get(path_id(group_id, "group"))
    if group is None:
        raise not_found(f"there is no group {group_id}")
    if await self.people.get(path_id(person_id, "person")) is None:
        raise not_found(f"there is no person {person_id}")
    return group


async def join_group(self: WebApp, request, group_id: int, person_id: int):
    group = await _group_and_person(self, group_id, person_id)
    joined = await self.hs.get_memberships().join(group.id, group.course_id, person_id)
    return answer(request, 201 if joined else 200,
                  {"group_id": group.id, "person_id": person_id, "member": True,
                   "changed": joined})


async def leave_group(self: WebApp, request, group_id: int, person_id: int):
    group = await _group_and_person(self, group_id, person_id)
    left = await self.groups.leave(group.id, person_id)
    return answer(request, 200, {"group_id": group.id, "person_id": person_id,
                                 "member": False, "changed": left})


# -- presence -------------------------------------------------------------------------
async def presence(self: WebApp, request):
    fields = Fields(read_json(self.config, request), ("person_id", "group_id"))
    person_id, group_id = fields.identifier("person_id"), fields.identifier("group_id")
    group = await _group_and_person(self, group_id, person_id)
    member = await self.groups.member(group.id, person_id)
    if member is None or not member.live:
        raise ApiError(409, f"person {person_id} is not a current member of group {group_id}")
    await self.groups.record_visit(group.id, person_id)
    # the same event as opening the group page: away members may be told
    notified = await self.notifier.visited(group.id, person_id)
    return answer(request, 202, {"recorded": True, "group_id": group.id,
                                 "person_id": person_id, "notified": notified})


# -- messages -------------------------------------------------------------------------
async def _recipients(self: WebApp, fields: Fields):
    """
    (index, person id or None, email or None, context) per recipient; an
    address is looked up among the people.
    """
    shared = fields.object("context")
    items = []
    for index, item in enumerate(fields.array("recipients", MAX_RECIPIENTS)):
        where = f"recipients[{index}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"{where}: must be an object with person_id or email")
        one = Fields(item, ("person_id", "email", "context"), where)
        if ("person_id" in item) == ("email" in item):
            raise ApiError(400, f"{where}: give exactly one of person_id and email")
        person_id = one.identifier("person_id", required=False)
        email = one.string("email", required=False, max_length=254)
        items.append((index, person_id, email, {**shared, **one.object("context")}))
    return items


async def send_message(self: WebApp, request):
    if self.outbox is None:
        raise ApiError(503, "this process cannot queue mail")
    fields = Fields(read_json(self.config, request),
                    ("template", "kind", "qos", "course_id", "batch", "context", "recipients"))
    template = fields.string("template", max_length=100, pattern=TEMPLATE_NAME)
    kind = fields.string("kind", max_length=100)
    if kind not in self.config.kinds:
        raise fields.bad("kind", f"no kind {kind!r}; configured: "
                                 f"{', '.join(sorted(self.config.kinds))}")
    qos = fields.string("qos", required=False, max_length=100)
    if qos is not None and qos not in self.config.qos:
        raise fields.bad("qos", f"no QoS class {qos!r}; configured: "
                                f"{', '.join(sorted(self.config.qos))}")
    course_id = fields.identifier("course_id", required=False)
    if course_id is not None and not await self.people.courses([course_id]):
        raise fields.bad("course_id", f"there is no course {course_id}")
    batch = fields.string("batch", required=False, max_length=200)
    try:
        self.outbox.composer.templates(template)
    except ComposeError as e:
        raise fields.bad("template", str(e)) from None
    items = await _recipients(self, fields)

    rejected, wanted = [], []
    for index, person_id, email, context in items:
        if email is not None:
            try:
                check_address(email)
            except ComposeError as e:
                rejected.append((index, None, email, str(e)))
                continue
            person = await self.people.by_email(email)
            if person is None:
                rejected.append((index, None, email, f"no person has the address {email}; "
                                 "add them with POST /api/v1/people first"))
                continue
            person_id = person.id
        wanted.append((index, person_id, email, context))
    try:
        report = await self.outbox.enqueue_people(
            template, [(pid, ctx) for _, pid, _, ctx in wanted], kind=kind,
            course_id=course_id, qos=qos, batch=batch)
    except ComposeError as e:
        raise ApiError(400, str(e)) from None
    refused = {r.index: r.reason for r in report.rejected}
    for at, (index, person_id, email, _) in enumerate(wanted):
        if at in refused:
            rejected.append((index, person_id, email, refused[at]))
    accepted = [(index, person_id) for at, (index, person_id, _, _) in enumerate(wanted)
                if at not in refused]
    rejected.sort()
    return answer(request, 202, {
        "ids": report.ids,
        "queued": [{"index": index, "person_id": pid, "id": mid}
                   for (index, pid), mid in zip(accepted, report.ids)],
        "rejected": [{"index": index, "person_id": pid, "email": email, "reason": reason}
                     for index, pid, email, reason in rejected],
    })


async def message_history(self: WebApp, request, message_id: int):
    row, attempts = await _outbox(self).history(path_id(message_id, "message"))
    if row is None:
        raise not_found(f"there is no message {message_id}")
    return answer(request, 200, {
        "id": message_id, "state": row.state, "reason": row.reason, "recipient": row.recipient,
        "counted_attempts": row.attempts,
        "attempts": [{"at": _iso(a.at), "outcome": a.outcome, "code": a.code, "reply": a.reply}
                     for a in attempts]})


# -- the queue -----------------------------------------------------------------------
async def queue(self: WebApp, request):
    return answer(request, 200, await queue_report(_outbox(self)))


async def batch_progress(self: WebApp, request, label: str):
    summary = queue_summary(await _outbox(self).batch_counts(label))
    if summary["total"] == 0:
        raise not_found(f"no messages were queued with the batch label {label!r}")
    return answer(request, 200, {"batch": label, **summary, "finished": finished(summary),
                                 "pending": pending(summary)})


# -- the document and unknown paths ------------------------------------------------------
async def openapi(self: WebApp, request):
    return answer(request, 200, document())


async def nowhere(self: WebApp, request, rest: str = ""):
    raise not_found(f"there is no API endpoint {request.path.decode('ascii', 'replace')}")


resource(routes, f"{PREFIX}/openapi.json", auth=False, GET=openapi)
resource(routes, f"{PREFIX}/people", POST=upsert_person)
resource(routes, f"{PREFIX}/people/<int:person_id>", GET=get_person)
resource(routes, f"{PREFIX}/groups", GET=list_groups, POST=create_group)
resource(routes, f"{PREFIX}/groups/<int:group_id>/members/<int:person_id>",
         PUT=join_group, DELETE=leave_group)
resource(routes, f"{PREFIX}/presence", POST=presence)
resource(routes, f"{PREFIX}/messages", POST=send_message)
resource(routes, f"{PREFIX}/messages/<int:message_id>", GET=message_history)
resource(routes, f"{PREFIX}/queue", GET=queue)
resource(routes, f"{PREFIX}/batches/<path:label>", GET=batch_progress)
# anything else under the prefix: a JSON 404 rather than the site's page
for _path in (PREFIX, f"{PREFIX}/", f"{PREFIX}/<path:rest>"):
    resource(routes, _path, auth=False, **{m: nowhere for m in ("GET", "POST", "PUT", "DELETE",
                                                         "PATCH", "OPTIONS")})
