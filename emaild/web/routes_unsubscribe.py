"""
Routes: unsubscribe links and the mail preferences page.

C{GET /unsubscribe/<token>} shows one page with the choice "this kind of
mail" or "all mail from this course" and changes nothing (mail scanners
and link previews fetch it).  C{POST /unsubscribe/<token>} acts:

  - from that page (C{choice=kind} or C{choice=course}): the opt-out is
    stored and a plain confirmation page shown;
  - RFC 8058 one-click (C{List-Unsubscribe=One-Click}, sent by a mail
    client to the C{List-Unsubscribe} URL, without cookies): the link's own
    scope is turned off and the answer is a short C{200}, no redirect.

The token is the only credential: an unsubscribe link proves the mail was
sent to its person, and it only ever turns mail off.  An expired
unsubscribe link is still honoured (RFC 8058 expects the URL of a message
to keep working; refusing would make someone keep mail they asked to
stop); an unknown or altered token is a 404.

C{GET /preferences} (signed in) lists every unsubscribable kind, everywhere
and per course, with an "all mail" switch; C{POST /preferences} (with the
session's CSRF token) stores them.
"""

from __future__ import annotations

from emaild.links.service import UNSUBSCRIBE
from emaild.outbound.kinds import KindError, Scope, parse_key, unsubscribable_kinds
from emaild.outbound.outbox import Outbox
from emaild.outbound.store import OutboxStore
from emaild.web.responses import form_value
from emaild.web.routing import Routes

routes = Routes()
register = routes.register

#: the body RFC 8058 one-click POSTs carry
ONE_CLICK = "One-Click"


def _optout_store(web) -> OutboxStore:
    return web.outbox.store


def _private(request) -> None:
    # the token is in the URL: leak it nowhere, index it nowhere
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"X-Robots-Tag", b"noindex, nofollow")


async def _course_titles(web, person_id: int) -> dict[int, str]:
    return {c.course_id: c.title for c in await web.people.courses_of(person_id)}


async def _resolve(web, request, token: str):
    """
    The unsubscribe link and its scope, or None after rendering the 404.
    """
    resolution = await web.links.resolve(token, UNSUBSCRIBE)
    if resolution.link is None:  # unknown; "expired" still has its link
        return None
    try:
        scope = Outbox.scope_of(resolution.link, "kind")
    except KindError:
        return None
    return resolution.link, scope


def _not_found(web, request) -> bytes:
    return web.pages.error(
        request, 404, "This unsubscribe link is not valid. Please use the link in the "
        "latest mail you received, or copy the whole link into the address bar.")


@routes.route("/unsubscribe/<token>", methods=["GET", "HEAD"])
async def unsubscribe_page(self, request, token):
    _private(request)
    found = await _resolve(self, request, token)
    if found is None:
        return _not_found(self, request)
    link, scope = found
    titles = await _course_titles(self, link.person_id)
    choices = []
    if scope.kind is not None:
        choices.append({"value": "kind", "label": scope.describe(self.config, titles)})
    choices.append({"value": "course", "label": scope.broaden_to_course().describe(self.config, titles)})
    session = await self.sessions.current(request)
    return self.pages.render(request, "unsubscribe.html", title="Unsubscribe", token=token,
                             choices=choices,
                             signed_in=session is not None and session.person_id == link.person_id)


@routes.route("/unsubscribe/<token>", methods=["POST"])
async def unsubscribe_post(self, request, token):
    _private(request)
    found = await _resolve(self, request, token)
    one_click = form_value(request, "List-Unsubscribe") == ONE_CLICK
    if found is None:
        if one_click:
            return _plain(request, 404, "Unknown unsubscribe link.\n")
        return _not_found(self, request)
    link, _scope = found
    choice = "kind" if one_click else form_value(request, "choice")
    try:
        scope = Outbox.scope_of(link, choice)
    except KindError:
        return self.pages.error(request, 400, "Please choose what to unsubscribe from.")
    await _optout_store(self).add_optout(link.person_id, scope, "one-click" if one_click else "web")
    await self.links.store.record_use(link.id)
    titles = await _course_titles(self, link.person_id)
    what = scope.describe(self.config, titles)
    if one_click:
        return _plain(request, 200, f"Unsubscribed: you will no longer get {what}.\n")
    return self.pages.render(request, "unsubscribe_done.html", title="Unsubscribed", what=what)


def _plain(request, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Cache-Control", b"no-store")
    return text.encode("utf-8")


# -- preferences -------------------------------------------------------------------


async def _preference_sections(web, person_id: int):
    """
    The page's sections and every scope it shows (the scopes a POST manages).
    """
    kinds = unsubscribable_kinds(web.config)
    optouts = await _optout_store(web).optouts(person_id)
    off = {o.scope for o in optouts}
    titles = await _course_titles(web, person_id)
    # courses the person left may still have opt-outs: show those too
    courses = list(titles) + sorted({o.scope.course_id for o in optouts
                                     if o.scope.course_id is not None} - set(titles))
    known_kinds = {k.name for k in kinds}
    extra_kinds = sorted({o.scope.kind for o in optouts if o.scope.kind is not None} - known_kinds)

    def item(scope: Scope, label: str) -> dict:
        # a broader opt-out that is off keeps this mail off whatever its own switch says
        blockers = [s for s in off if s != scope and s.covers(scope.course_id, scope.kind)]
        blocked_by = ""
        if blockers:
            broadest = min(blockers, key=lambda s: (s.kind is not None, s.course_id is not None))
            blocked_by = broadest.describe(web.config, titles)
        return {"key": scope.key, "label": label, "on": scope not in off, "blocked_by": blocked_by,
                "scope": scope}

    sections = []
    everywhere = [item(Scope(None, None), "All mail (every course)")]
    everywhere += [item(Scope(None, k.name), f"{k.description} (every course)") for k in kinds]
    everywhere += [item(Scope(None, name), f"{name} mail (every course)") for name in extra_kinds]
    sections.append({"title": "Everywhere", "items": everywhere})
    for course_id in courses:
        title = titles.get(course_id) or f"Course {course_id}"
        items = [item(Scope(course_id, None), f"All mail from {title}")]
        items += [item(Scope(course_id, k.name), k.description) for k in kinds]
        items += [item(Scope(course_id, name), f"{name} mail")
                  for name in extra_kinds if Scope(course_id, name) in off]
        sections.append({"title": title, "items": items})
    managed = {i["scope"] for s in sections for i in s["items"]}
    return sections, managed


def _sign_in_first(web, request) -> bytes:
    return web.pages.error(
        request, 401, "Please sign in to change your mail preferences: open the course and "
        "follow its link to this site, or use the link in any mail from the course.")


@routes.route("/preferences", methods=["GET", "HEAD"])
async def preferences_page(self, request):
    session = await self.sessions.current(request)
    if session is None:
        return _sign_in_first(self, request)
    sections, _managed = await _preference_sections(self, session.person_id)
    saved = request.args.get(b"saved") == [b"1"]
    return self.pages.render(request, "preferences.html", title="Mail preferences",
                             sections=sections, csrf_token=session.csrf_token, saved=saved)


@routes.route("/preferences", methods=["POST"])
async def preferences_post(self, request):
    session = await self.sessions.current(request)
    if session is None:
        return _sign_in_first(self, request)
    if not self.sessions.check_csrf(request, session):
        return self.pages.error(request, 403, "This form has expired. Please reload the "
                                "preferences page and try again.")
    _sections, managed = await _preference_sections(self, session.person_id)
    keys = set()
    for raw in request.args.get(b"on", []):
        try:
            keys.add(raw.decode("ascii"))
        except UnicodeDecodeError:
            continue
    on = {parse_key(k) for k in keys} - {None}
    await _optout_store(self).set_optouts(session.person_id, managed, managed - on, "preferences")
    request.setResponseCode(303)
    request.setHeader(b"Location", (self.config["http"]["public_url"] + "/preferences?saved=1")
                      .encode("ascii"))
    request.setHeader(b"Cache-Control", b"no-store")
    return b""
