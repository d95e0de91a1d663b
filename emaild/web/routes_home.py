"""
Routes: the learner's home page and signing out.

C{GET /home}
    Signed in: the person's display name, their courses (with roles) and
    current groups, a link to C{/preferences}, and a sign-out form.
    Not signed in (no cookie, or a session that is unknown, revoked, idle or
    past its absolute expiry): C{401} with a page explaining how people
    arrive here (from their course in the learning platform, or from a link
    in one of our emails).  There is no password form to send them to.

C{POST /logout}
    With a session and the right C{csrf_token}: the session is revoked, the
    cookie cleared, and a "signed out" page shown.  With a session but a
    missing or wrong token: C{403}, and the session stays (a cross-site form
    cannot sign anyone out).  Without a valid session there is nothing to
    protect: the cookie is cleared and the same "signed out" page is shown
    (e.g. a second click in a stale tab).

All pages are autoescaped Jinja2 (names and course titles come from the LMS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emaild.db.database import DatabaseUnavailable
from emaild.web.routing import Routes, uncancellable

if TYPE_CHECKING:
    from emaild.web.app import WebApp

routes = Routes()
register = routes.register


def _role(role: str) -> str:
    """
    C{urn:lti:role:ims/lis/Instructor} -> C{Instructor}.
    """
    return role.rsplit("/", 1)[-1].rsplit(":", 1)[-1] or role


@routes.route("/home", methods=["GET", "HEAD"])
@uncancellable
async def home(self: WebApp, request):
    try:
        session = await self.sessions.current(request)
        person = await self.people.get(session.person_id) if session else None
        if person is None:
            return self.pages.signed_out(request, 401, "anonymous")
        courses = await self.people.courses_of(person.id)
        groups = await self.people.groups_of(person.id)
    except DatabaseUnavailable:
        return self.pages.unavailable(request)
    name = person.display_name or person.email or "there"
    courses = [{"id": c.course_id, "title": c.title, "roles": [_role(r) for r in c.roles]}
               for c in courses]
    return self.pages.render(
        request, "home.html", 200, title="Your course mail", state="signed_in",
        name=name, courses=courses,
        groups=[{"id": g.group_id, "name": g.name, "course": g.course_title} for g in groups],
        csrf_token=session.csrf_token)


@routes.route("/logout", methods=["POST"])
@uncancellable
async def logout(self: WebApp, request):
    try:
        session = await self.sessions.current(request)
        if session is not None and not self.sessions.check_csrf(request, session):
            return self.pages.error(request, 403, "This sign-out form is out of date or did not "
                                    "come from our page. Reload your home page and try again.")
        await self.sessions.end(request)
    except DatabaseUnavailable:
        return self.pages.unavailable(request)
    return self.pages.signed_out(request, 200, "signed_out")
