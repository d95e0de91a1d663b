"""
Routes: a group's page, and posting to the group from it.

C{GET /groups/<id>}
    For a signed-in current member: the group's name and course, its
    members by display name (never an address), its recently active
    threads, the viewer's own reply address, and a form to start a new
    discussion.  Every such visit is recorded (L{GroupStore.record_visit})
    and the other members who are away may hear of it (L{Notifier.visited}).
    Not signed in: C{401}, the page C{/home} shows.  No such group: C{404}.
    Not a current member (never, or left): C{403}.

C{POST /groups/<id>/post}
    Same checks, then the C{csrf_token} (C{403} if missing or wrong).  The
    post is stored as the mail the member could have sent to their reply
    address (L{post_from_web}; the relay processor sends it on) and the
    browser is sent back to the page (C{303}) with a confirmation.  A post
    refused (empty subject, too long…) shows the form again with the reason
    and what they typed (C{400}).
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from emaild.db.database import DatabaseUnavailable
from emaild.inbound.webpost import PostError, post_from_web
from emaild.web.responses import form_value
from emaild.web.routing import Routes, uncancellable

if TYPE_CHECKING:
    from emaild.web.app import WebApp

routes = Routes()
register = routes.register


class _Refused(Exception):
    def __init__(self, page: bytes):
        self.page = page


async def _viewer(self: WebApp, request, group_id: int):
    """
    The signed-in person's session, the group and their live membership.

    @raise _Refused: with the page to show instead.
    """
    session = await self.sessions.current(request)
    if session is None or await self.people.get(session.person_id) is None:
        raise _Refused(self.pages.signed_out(request, 401, "anonymous"))
    group = await self.groups.get(group_id)
    if group is None:
        raise _Refused(self.pages.error(request, 404, "There is no such group."))
    member = await self.groups.member(group_id, session.person_id)
    if member is None or not member.live:
        raise _Refused(self.pages.error(request, 403, "You are not a member of this group."))
    return session, group, member


def _utc(when) -> str:
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _confirmation(request) -> str | None:
    raw = form_value(request, "posted")
    if not raw.isdigit() or len(raw) > 6:
        return None
    n = int(raw)
    if n == 0:
        return "Your message is saved; nobody else is in this group yet."
    return f"Your message is on its way to {n} {'member' if n == 1 else 'members'}."


async def _page(self: WebApp, request, session, group, member, code: int = 200,
                error: str | None = None, subject: str = "", text: str = "") -> bytes:
    members = await self.groups.members(group.id)
    threads = await self.groups.threads(group.id)
    return self.pages.render(
        request, "group.html", code, title=group.name, group=group,
        members=[m.display_name for m in members],
        threads=[{"subject": t.subject, "started_by": t.started_by, "posts": t.posts,
                  "last": _utc(t.last_post_at)} for t in threads],
        reply_address=self.reply_addresses.address(member.token),
        csrf_token=session.csrf_token, error=error, subject=subject, text=text,
        confirmation=None if error else _confirmation(request))


@routes.route("/groups/<int:group_id>", methods=["GET", "HEAD"])
@uncancellable
async def group_page(self: WebApp, request, group_id: int):
    try:
        session, group, member = await _viewer(self, request, group_id)
        if request.method == b"GET":  # not a HEAD (a link checker, a prefetch)
            await self.groups.record_visit(group.id, session.person_id)
            await self.notifier.visited(group.id, session.person_id)
        return await _page(self, request, session, group, member)
    except _Refused as refused:
        return refused.page
    except DatabaseUnavailable:
        return self.pages.unavailable(request)


@routes.route("/groups/<int:group_id>/post", methods=["POST"])
@uncancellable
async def group_post(self: WebApp, request, group_id: int):
    try:
        session, group, member = await _viewer(self, request, group_id)
        if not self.sessions.check_csrf(request, session):
            return self.pages.error(request, 403, "This form is out of date or did not come "
                                    "from our page. Reload the group's page and try again.")
        subject, text = form_value(request, "subject"), form_value(request, "text")
        try:
            await post_from_web(self.inbound, self.groups, self.reply_addresses, group.id,
                                session.person_id, subject, text)
        except PostError as e:
            return await _page(self, request, session, group, member, 400, error=str(e),
                               subject=subject, text=text)
        others = sum(1 for m in await self.groups.members(group.id)
                     if m.person_id != session.person_id)
    except _Refused as refused:
        return refused.page
    except DatabaseUnavailable:
        return self.pages.unavailable(request)
    request.setResponseCode(303)
    request.setHeader(b"Location", f"/groups/{group.id}?posted={others}".encode("ascii"))
    request.setHeader(b"Cache-Control", b"no-store")
    return b""
