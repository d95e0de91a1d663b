"""
Announcements over the JSON API: the same L{emaild.digest.announce} calls
the CLI and the staff page use.

    POST /api/v1/announcements                  a template to a course, a group or people
    POST /api/v1/announcements/<label>/resend   again, to the failed recipients only

Progress is C{GET /api/v1/batches/<label>} (an announcement's messages carry
its label as their batch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emaild.digest.announce import AnnounceError
from emaild.web.api_support import PREFIX, ApiError, Fields, answer, read_json, resource
from emaild.web.routing import Routes

if TYPE_CHECKING:
    from emaild.web.app import WebApp

routes = Routes()
register = routes.register

#: people one announcement may list by id (a course or group has no limit)
MAX_PEOPLE = 10000
TEMPLATE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"


def _result(request, status: int, result) -> object:
    return answer(request, status, {
        "label": result.label, "queued": result.queued,
        "rejected": [{"person_id": r.person_id, "reason": r.reason} for r in result.rejected],
        "progress": f"{PREFIX}/batches/{result.label}"})


async def announce(self: WebApp, request):
    fields = Fields(read_json(self.config, request),
                    ("template", "course_id", "group_id", "person_ids", "context", "subject"))
    template = fields.string("template", required=False, max_length=100,
                             pattern=TEMPLATE_NAME) or "announcement"
    course_id = fields.identifier("course_id", required=False)
    group_id = fields.identifier("group_id", required=False)
    person_ids = None
    if "person_ids" in fields.body:
        person_ids = fields.array("person_ids", MAX_PEOPLE)
        for index, value in enumerate(person_ids):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise fields.bad("person_ids", f"item {index} is not a person id: {value!r}")
    if sum(x is not None for x in (group_id, person_ids)) > 1 or (
            group_id is None and person_ids is None and course_id is None):
        raise ApiError(400, "give exactly one audience: course_id, group_id or person_ids "
                            "(with person_ids, course_id is the course the mail is about)")
    if group_id is not None and course_id is not None:
        raise fields.bad("course_id", "not with group_id (the group's course is used)")
    subject = fields.string("subject", required=False, max_length=200)
    try:
        result = await self.announcements.send(
            template, course_id=course_id, group_id=group_id,
            person_ids=person_ids, context=fields.object("context"), subject=subject)
    except AnnounceError as e:
        raise ApiError(400, str(e)) from None
    return _result(request, 202, result)


async def resend(self: WebApp, request, label: str):
    try:
        result = await self.announcements.resend_failed(label)
    except AnnounceError as e:
        raise ApiError(404 if "no announcement" in str(e) else 409, str(e)) from None
    return _result(request, 202, result)


resource(routes, f"{PREFIX}/announcements", POST=announce)
resource(routes, f"{PREFIX}/announcements/<path:label>/resend", POST=resend)
