"""
Routes: "Did you send this?" for group posts held until their member
confirms them (see L{emaild.inbound.holds}).

C{GET /hold/<token>} shows the held post's subject, group, time and sending
server with two buttons and changes nothing (mail scanners and link
previews fetch links).  C{POST /hold/<token>} with C{choice=send} releases
the post to the relay processor, with C{choice=discard} discards it.  The
token, mailed to the member's own address, is the only credential; an
unknown token is a 404, an expired one a 410 (the post is then never sent).
"""

from __future__ import annotations

import datetime

from emaild.inbound.holds import Holds, subject_of
from emaild.inbound.holds_store import EXPIRED, WAITING
from emaild.web.responses import form_value
from emaild.web.routing import Routes

routes = Routes()
register = routes.register

CHOICES = {"send": True, "discard": False}


def _holds(web) -> Holds:
    return web.hs.get_holds()


def _private(request) -> None:
    # the token is in the URL: leak it nowhere, index it nowhere
    request.setHeader(b"Referrer-Policy", b"no-referrer")
    request.setHeader(b"X-Robots-Tag", b"noindex, nofollow")


async def _find(web, request, token):
    """The hold of C{token}, or (None, the error page to answer)."""
    resolution, hold = await _holds(web).find(token)
    if hold is None:
        return None, web.pages.error(
            request, 404, "This link is not valid. Please use the link in the latest mail "
            "we sent you, or copy the whole link into the address bar.")
    if hold.state == EXPIRED or (resolution.status == "expired" and hold.state == WAITING):
        return None, web.pages.error(
            request, 410, "This link has expired. The message was not sent to the group and "
            "will not be; if you wrote it, please send it again.")
    return hold, None


def _when(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%d %B %Y, %H:%M UTC")


@routes.route("/hold/<token>", methods=["GET", "HEAD"])
async def hold_page(self, request, token):
    _private(request)
    hold, error = await _find(self, request, token)
    if hold is None:
        return error
    return self.pages.render(
        request, "hold.html", title="Did you send this?", token=token, state=hold.state,
        group_name=hold.group_name or "your group", subject=subject_of(hold.raw),
        received=_when(hold.received_at), server=f"{hold.helo or 'unnamed'} [{hold.peer}]")


@routes.route("/hold/<token>", methods=["POST"])
async def hold_answer(self, request, token):
    _private(request)
    hold, error = await _find(self, request, token)
    if hold is None:
        return error
    choice = form_value(request, "choice")
    if choice not in CHOICES:
        return self.pages.error(request, 400, "Please choose \"send it\" or \"it was not me\".")
    if hold.state != WAITING:  # answered before: say how, change nothing
        return await hold_page(self, request, token)
    state = await _holds(self).answer(hold, CHOICES[choice])
    return self.pages.render(request, "hold_done.html", title="Did you send this?",
                             state=state, group_name=hold.group_name or "your group")
