"""
Routes: the course staff's pages.

Only signed-in people whose LTI role in the course is Instructor or
Administrator (short names, URNs and LTI 1.3 URIs; see
L{emaild.people.roles.STAFF_ROLE}) get in.  Not signed in: C{401}; no such
course: C{404}; anyone else (learners, other courses' staff): C{403}.
Every POST checks the session's C{csrf_token} (C{403} without it).

C{GET /staff/courses/<id>}
    The course's groups with their current members, a form to send an
    announcement (to the whole course or one group), the note for the next
    weekly update, and the delivery of the course's announcements (counts
    by state, the failures with their last reply, re-sends).

C{POST /staff/courses/<id>/announce/preview}
    Renders the announcement for its first recipient and shows it (escaped
    text) with the number of recipients and a button to confirm.

C{POST /staff/courses/<id>/announce}
    Queues it (L{emaild.digest.announce.Announcements.send}) and redirects
    (C{303}) to the course page, which shows its progress.

C{POST /staff/courses/<id>/note}
    Sets (or, empty, removes) the note for the next weekly update.

C{POST /staff/courses/<id>/resend}
    Re-sends an announcement of this course to its failed recipients.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from emaild.db.database import DatabaseUnavailable
from emaild.digest import weeks
from emaild.digest.announce import AnnounceError
from emaild.web.responses import form_value
from emaild.web.routing import Routes, uncancellable

if TYPE_CHECKING:
    from emaild.web.app import WebApp

routes = Routes()
register = routes.register

TEMPLATE = "announcement"
MAX_SUBJECT = 200
MAX_BODY = 20000


class _Refused(Exception):
    def __init__(self, page: bytes):
        self.page = page


async def _staff(self: WebApp, request, course_id: int, post: bool = False):
    """
    The signed-in staff member's session and the course.

    @raise _Refused: with the page to show instead.
    """
    session = await self.sessions.current(request)
    if session is None or await self.people.get(session.person_id) is None:
        raise _Refused(self.pages.signed_out(request, 401, "anonymous"))
    course = (await self.people.courses([course_id])).get(course_id)
    if course is None:
        raise _Refused(self.pages.error(request, 404, "There is no such course."))
    if not await self.people.is_staff(course_id, session.person_id):
        raise _Refused(self.pages.error(
            request, 403, "Only the course's instructors and administrators can see this page."))
    if post and not self.sessions.check_csrf(request, session):
        raise _Refused(self.pages.error(request, 403, "This form is out of date or did not come "
                                        "from our page. Reload the course page and try again."))
    return session, course


def _utc(when) -> str:
    if when is None:
        return "-"
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _next_week(self: WebApp) -> str:
    digest = self.config["digest"]
    return weeks.next_week_to_send(self.reactor.seconds(), digest["weekday"], digest["hour"])


async def _course_page(self: WebApp, request, session, course, code: int = 200,
                       error: str | None = None, form: dict | None = None) -> bytes:
    store = self.hs.get_digest_store()
    outbox_store = self.hs.get_outbox_store()
    groups = []
    for group, _count in await self.groups.list(course.id):
        members = await self.groups.members(group.id)
        groups.append({"id": group.id, "name": group.name,
                       "members": [m.display_name or "(no name)" for m in members]})
    announcements = []
    for a in await store.announcements(course.id):
        announcements.append({
            "label": a.label, "audience": a.audience, "created": _utc(a.created_at),
            "subject": (a.context or {}).get("subject", ""), "resend_of": a.resend_of,
            "counts": await self.announcements.progress(a.label),
            "failures": [{"recipient": f.recipient, "attempts": f.attempts,
                          "reason": f.reason or "", "last_reply": f.last_reply or "",
                          "at": _utc(f.finished_at)}
                         for f in await outbox_store.batch_failures(a.label, 20)],
        })
    week = _next_week(self)
    sent = form_value(request, "sent")
    return self.pages.render(
        request, "staff_course.html", code, title=f"Staff: {course.title or course.context_id}",
        course={"id": course.id, "title": course.title or course.context_id},
        members=len(await self.people.course_members(course.id)), groups=groups,
        announcements=announcements, csrf_token=session.csrf_token, error=error,
        form=form or {"target": "course", "subject": "", "body": ""},
        week=week, note=await store.note(course.id, week) or "",
        sent=sent if any(a["label"] == sent for a in announcements) else None,
        noted=form_value(request, "noted") == "1")


def _form(request) -> dict:
    return {"target": form_value(request, "target") or "course",
            "subject": form_value(request, "subject").strip(),
            "body": form_value(request, "body")}


async def _audience(self: WebApp, course, form: dict) -> dict:
    """
    C{{"course_id": …}} or C{{"group_id": …}} for the form's target.

    @raise AnnounceError: a bad target, or a group of another course.
    """
    target = form["target"]
    if target == "course":
        return {"course_id": course.id}
    if target.startswith("group:") and target[6:].isdigit():
        group = await self.groups.get(int(target[6:]))
        if group is not None and group.course_id == course.id:
            return {"group_id": group.id}
    raise AnnounceError("Choose the whole course or one of its groups.")


def _check(form: dict) -> None:
    if not form["subject"]:
        raise AnnounceError("The announcement needs a subject.")
    if not form["body"].strip():
        raise AnnounceError("The announcement needs a message.")
    if len(form["subject"]) > MAX_SUBJECT or len(form["body"]) > MAX_BODY:
        raise AnnounceError(f"Keep the subject within {MAX_SUBJECT} characters and the "
                            f"message within {MAX_BODY}.")


def _redirect(request, location: str) -> bytes:
    request.setResponseCode(303)
    request.setHeader(b"Location", location.encode("ascii"))
    request.setHeader(b"Cache-Control", b"no-store")
    return b""


@routes.route("/staff/courses/<int:course_id>", methods=["GET", "HEAD"])
@uncancellable
async def staff_course(self: WebApp, request, course_id: int):
    try:
        session, course = await _staff(self, request, course_id)
        return await _course_page(self, request, session, course)
    except _Refused as refused:
        return refused.page
    except DatabaseUnavailable:
        return self.pages.unavailable(request)


@routes.route("/staff/courses/<int:course_id>/announce/preview", methods=["POST"])
@uncancellable
async def staff_preview(self: WebApp, request, course_id: int):
    try:
        session, course = await _staff(self, request, course_id, post=True)
        form = _form(request)
        try:
            _check(form)
            who = await _audience(self, course, form)
            shown = await self.announcements.preview(TEMPLATE, context={"body": form["body"]},
                                                     subject=form["subject"], **who)
        except AnnounceError as e:
            return await _course_page(self, request, session, course, 400, str(e), form)
        return self.pages.render(
            request, "staff_preview.html", 200, title="Check your announcement",
            course={"id": course.id, "title": course.title or course.context_id},
            preview=shown, form=form, csrf_token=session.csrf_token)
    except _Refused as refused:
        return refused.page
    except DatabaseUnavailable:
        return self.pages.unavailable(request)


@routes.route("/staff/courses/<int:course_id>/announce", methods=["POST"])
@uncancellable
async def staff_announce(self: WebApp, request, course_id: int):
    try:
        session, course = await _staff(self, request, course_id, post=True)
        form = _form(request)
        try:
            _check(form)
            who = await _audience(self, course, form)
            result = await self.announcements.send(TEMPLATE, context={"body": form["body"]},
                                                   subject=form["subject"],
                                                   created_by=session.person_id, **who)
        except AnnounceError as e:
            return await _course_page(self, request, session, course, 400, str(e), form)
    except _Refused as refused:
        return refused.page
    except DatabaseUnavailable:
        return self.pages.unavailable(request)
    return _redirect(request, f"/staff/courses/{course.id}?sent={result.label}")


@routes.route("/staff/courses/<int:course_id>/note", methods=["POST"])
@uncancellable
async def staff_note(self: WebApp, request, course_id: int):
    try:
        session, course = await _staff(self, request, course_id, post=True)
        note = form_value(request, "note")
        if len(note) > MAX_BODY:
            return await _course_page(self, request, session, course, 400,
                                      f"Keep the note within {MAX_BODY} characters.")
        await self.hs.get_digest_store().set_note(course.id, _next_week(self), note, session.person_id)
    except _Refused as refused:
        return refused.page
    except DatabaseUnavailable:
        return self.pages.unavailable(request)
    return _redirect(request, f"/staff/courses/{course.id}?noted=1")


@routes.route("/staff/courses/<int:course_id>/resend", methods=["POST"])
@uncancellable
async def staff_resend(self: WebApp, request, course_id: int):
    try:
        session, course = await _staff(self, request, course_id, post=True)
        label = form_value(request, "label")
        found = await self.hs.get_digest_store().announcement(label)
        if found is None or found.course_id != course.id:
            return self.pages.error(request, 404, "There is no such announcement in this course.")
        try:
            result = await self.announcements.resend_failed(label, created_by=session.person_id)
        except AnnounceError as e:
            return await _course_page(self, request, session, course, 400, str(e))
    except _Refused as refused:
        return refused.page
    except DatabaseUnavailable:
        return self.pages.unavailable(request)
    return _redirect(request, f"/staff/courses/{course.id}?sent={result.label}")
