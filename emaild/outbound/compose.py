"""
Render a template for one recipient into a complete RFC 5322 message.

Templates come in threes: C{<name>.subject.txt}, C{<name>.txt} and,
optionally, C{<name>.html}; with an HTML part the message is
multipart/alternative.  The message is assembled by hand rather than with
C{email.message} because enqueueing 100,000 of them must take seconds, and
every header value that can carry user data goes through
L{emaild.mailformat.headers}, so no value can start a new header line.

Stored messages use LF line endings; transports convert to CRLF on the wire.

Mail to a person (not a bare address) can carry links: a template calls
C{{{ link("/groups/3") }}} and gets a placeholder (random for each render,
so no context value can forge one).  L{Composer.draft} renders and collects
the link requests; the caller mints every link of a batch in one
L{emaild.links.service.Links.mint_many} call; L{Composer.finish} puts the
URLs in and only then encodes the parts (quoted-printable would split a
placeholder).  Mail of an unsubscribable kind also gets an unsubscribe link
for C{List-Unsubscribe} (RFC 2369, with RFC 8058 one-click) and for the
template as C{unsubscribe_url}.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from email.utils import formatdate
from typing import Any, Callable, Mapping, Sequence

import attrs
import jinja2
from markupsafe import escape

from emaild.links.service import LOGIN, ROUTES, UNSUBSCRIBE, LinkError
from emaild.links.store import LinkRequest, LinkRow
from emaild.mailformat import addresses
from emaild.mailformat.headers import (
    HeaderError,
    address_header,
    check_header_uri,
    encoded_header,
    header_text,
)
from emaild.mailformat.parts import encode_text_part, text_part_headers
from emaild.outbound.kinds import KindError, Scope, parse_target
from emaild.templating import Renderer


class RandomHex:
    """
    C{secrets.token_hex(nbytes)}, drawn from a buffer the operating system's
    random source fills L{BUFFER} tokens at a time: one C{getrandom} call per
    token would cost as much as the rest of a message's headers.  The bytes
    are the same kind (C{secrets.token_bytes}); each is used once.  A forked
    child starts with an empty buffer, so it never repeats its parent's.
    """

    #: tokens per refill
    BUFFER = 512

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self._buffer = b""
        self._at = 0
        os.register_at_fork(after_in_child=self.clear)

    def clear(self) -> None:
        self._buffer, self._at = b"", 0

    def __call__(self) -> str:
        at, end = self._at, self._at + self.nbytes
        if end > len(self._buffer):
            self._buffer, at, end = secrets.token_bytes(self.nbytes * self.BUFFER), 0, self.nbytes
        self._at = end
        return self._buffer[at:end].hex()


#: the default Message-ID / bounce address token: 80 random bits
new_message_token = RandomHex(10)


class ComposeError(ValueError):
    """
    This recipient's message cannot be made; the message says why (bad
    address, missing template, a template error or missing value).
    """


def check_address(address: str) -> str:
    """
    L{emaild.mailformat.addresses.check_address}, raising L{ComposeError}
    (what callers of the composer catch) instead of its C{AddressError}.
    """
    try:
        return addresses.check_address(address)
    except addresses.AddressError as e:
        raise ComposeError(str(e)) from None


def _check_uri(uri: str) -> str:
    try:
        return check_header_uri(uri)
    except HeaderError as e:
        raise ComposeError(str(e)) from None


@attrs.frozen
class Rendered:
    recipient: str
    envelope_from: str
    message_id: str
    subject: str
    data: bytes
    #: set for mail to a person (L{Outbox.enqueue_people})
    person_id: int | None = None
    course_id: int | None = None
    kind: str | None = None
    #: carries List-Unsubscribe; the person's opt-outs apply when it is claimed
    unsubscribable: bool = False


class _Links:
    """
    The C{link(target, purpose="login")} a template calls: it records a
    link request and returns a placeholder for its URL.  One per render.
    """

    __slots__ = ("links", "person_id", "prefix", "requests", "placeholders", "_seen")

    def __init__(self, links, person_id: int | None, prefix: str):
        self.links = links
        self.person_id = person_id
        self.prefix = prefix
        self.requests: list[LinkRequest] = []
        self.placeholders: list[str] = []
        self._seen: dict[tuple[str, str], str] = {}

    def __call__(self, target: Any = "/home", purpose: str = LOGIN) -> str:
        if self.person_id is None:
            raise ComposeError(
                "link() makes a personal sign-in link, so it needs a person: mail to a bare "
                "address cannot carry one (queue the mail to people instead)")
        if self.links is None:
            raise ComposeError("link() is not available: this composer has no links service")
        if not isinstance(target, str):
            raise ComposeError(f"link() needs a target path such as '/home', got {target!r}")
        if purpose == UNSUBSCRIBE:
            try:
                parse_target(target)
            except KindError as e:
                raise ComposeError(f"link(..., purpose='unsubscribe'): {e}") from None
        elif purpose != LOGIN:
            raise ComposeError(f"link() purpose must be {LOGIN!r} or {UNSUBSCRIBE!r}, got {purpose!r}")
        key = (purpose, target)
        placeholder = self._seen.get(key)
        if placeholder is None:
            try:
                request = self.links.request(self.person_id, purpose, target)
            except LinkError as e:
                raise ComposeError(f"link({target!r}): {e}") from None
            placeholder = f"{self.prefix}{len(self.requests)}_"
            self.requests.append(request)
            self.placeholders.append(placeholder)
            self._seen[key] = placeholder
        return placeholder


@attrs.define(slots=True)
class Draft:
    """
    A rendered message whose links are not minted yet (see L{Composer.finish}).
    """

    recipient: str
    display_name: str
    subject: str
    text: str
    html: str | None
    #: links the template asked for, in the order of C{placeholders}
    requests: list[LinkRequest]
    placeholders: list[str]
    #: the List-Unsubscribe link to mint (unsubscribable mail to a person)
    unsubscribe: LinkRequest | None = None
    unsubscribe_placeholder: str = ""
    person_id: int | None = None
    course_id: int | None = None
    kind: str | None = None
    #: what every placeholder of this render starts with ('' without a person)
    placeholder_prefix: str = ""

    def link_requests(self) -> list[LinkRequest]:
        """
        Everything to mint for this message: the template's links, then the
        unsubscribe link if any (the order L{Composer.finish} expects).
        """
        if self.unsubscribe is None:
            return self.requests
        return [*self.requests, self.unsubscribe]


class Composer:
    """
    @param env: the e-mail Jinja2 environment (see L{emaild.templating}).
    @param globals_: extra names every template sees (site URL, helpers).
    @param links: the L{emaild.links.service.Links} service, for C{link()}
        and unsubscribe links (mail to people only).
    """

    def __init__(
        self,
        env: jinja2.Environment,
        relay_domain: str,
        from_address: str,
        from_name: str = "",
        clock: Callable[[], float] = time.time,
        globals_: Mapping[str, Any] | None = None,
        links=None,
        new_token: Callable[[], str] = new_message_token,
    ):
        self.env = env
        self.relay_domain = relay_domain
        self.from_header = address_header("From", from_name, from_address)
        self.clock = clock
        self.globals = dict(globals_ or {})
        self.links = links
        self.new_token = new_token
        # the environment never reloads (auto_reload=False), so neither do we
        self._templates: dict[str, tuple] = {}
        self._renderers: dict[str, tuple] = {}
        # link() without a person only refuses, so every such render can share one
        self._no_person_links = _Links(links, None, "")
        self._date = (-1, "")

    def templates(self, name: str) -> tuple[jinja2.Template, jinja2.Template, jinja2.Template | None]:
        """
        The (subject, text, html-or-None) templates called C{name}.
        """
        found = self._templates.get(name)
        if found is None:
            found = self._templates[name] = self._load_templates(name)
        return found

    def renderers(self, name: str) -> tuple[Renderer, Renderer, Renderer | None]:
        """
        L{templates}, each ready to render many times with this composer's
        globals (L{emaild.templating.Renderer}).
        """
        found = self._renderers.get(name)
        if found is None:
            subject, text, html = self.templates(name)
            found = self._renderers[name] = (
                Renderer(subject, self.globals), Renderer(text, self.globals),
                Renderer(html, self.globals) if html is not None else None)
        return found

    def _load_templates(self, name: str):
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", name) or ".." in name:
            raise ComposeError(f"{name!r} is not a template name")
        try:
            subject = self.env.get_template(f"{name}.subject.txt")
            text = self.env.get_template(f"{name}.txt")
        except jinja2.TemplateNotFound as e:
            raise ComposeError(f"template {name!r} has no {e.name}") from None
        except jinja2.TemplateSyntaxError as e:
            raise ComposeError(f"template {e.name} line {e.lineno}: {e.message}") from None
        try:
            html = self.env.get_template(f"{name}.html")
        except jinja2.TemplateNotFound:
            html = None
        except jinja2.TemplateSyntaxError as e:
            raise ComposeError(f"template {e.name} line {e.lineno}: {e.message}") from None
        return subject, text, html

    def _date_header(self) -> str:
        # formatdate is costly next to the rest of a message, and its text
        # changes once a second
        now = int(self.clock())
        if now != self._date[0]:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]

    def template_names(self) -> list[str]:
        return sorted(
            n[: -len(".subject.txt")] for n in self.env.list_templates()
            if n.endswith(".subject.txt")
        )

    def render(self, template: str, recipient: str, context: Mapping[str, Any] | None = None) -> Rendered:
        """
        The message to a bare address (no person: C{link()} is refused).

        @raise ComposeError: bad address, missing template, or a template that
            fails for this context (e.g. a value it needs is missing).
        """
        return self.finish(self.draft(template, recipient, context), ())

    def draft(self, template: str, recipient: str, context: Mapping[str, Any] | None = None,
              person_id: int | None = None, display_name: str = "",
              kind: str | None = None, course_id: int | None = None,
              unsubscribable: bool = False) -> Draft:
        """
        Render C{template} for C{recipient}, with placeholders for the links
        it asks for (see L{finish}).

        @param person_id: the person the mail is to; without one, C{link()}
            fails and there is no unsubscribe link.
        @param display_name: the person's name for To (else C{context["name"]}).
        @param unsubscribable: add List-Unsubscribe for the scope C{kind} in
            C{course_id} (needs C{person_id} and C{kind}).
        @raise ComposeError: as L{render}, or a bad C{link()} target.
        """
        recipient = check_address(recipient)
        subject_t, text_t, html_t = self.renderers(template)
        prefix = ""
        unsubscribe = None
        if person_id is not None:
            # unguessable, so no value in the context can pass for a link
            prefix = f"emaildlink{secrets.token_hex(8)}x"
        link = (_Links(self.links, person_id, prefix) if person_id is not None
                else self._no_person_links)
        # the composer's globals are in the renderers; values override them
        values = dict(context) if context else {}
        values["recipient"] = recipient
        values["link"] = link
        if person_id is not None:
            values["person_id"] = person_id
            if display_name and "name" not in values and "name" not in self.globals:
                values["name"] = display_name
        unsubscribe_placeholder = ""
        if unsubscribable:
            if person_id is None or kind is None:
                raise ComposeError("an unsubscribe link needs the person and the kind of mail")
            if self.links is None:
                raise ComposeError("cannot add List-Unsubscribe: this composer has no links service")
            unsubscribe = self.links.request(person_id, UNSUBSCRIBE, Scope(course_id, kind).target)
            unsubscribe_placeholder = f"{prefix}u_"
        if unsubscribable:
            values["unsubscribe_url"] = unsubscribe_placeholder
        elif "unsubscribe_url" not in values and "unsubscribe_url" not in self.globals:
            # falsy, so templates can say {% if unsubscribe_url %}
            values["unsubscribe_url"] = ""
        try:
            subject = header_text(subject_t.render(values))
            text = text_t.render(values)
            html = html_t.render(values) if html_t is not None else None
        except ComposeError as e:
            raise ComposeError(f"template {template!r}: {e}") from None
        except jinja2.UndefinedError as e:
            raise ComposeError(f"template {template!r}: {e.message} (missing from the context)") from None
        except Exception as e:
            raise ComposeError(f"template {template!r} failed: {e}") from None
        display = display_name or values.get("name", self.globals.get("name")) or ""
        return Draft(recipient, display, subject, text, html, link.requests, link.placeholders,
                     unsubscribe, unsubscribe_placeholder, person_id, course_id, kind, prefix)

    def finish(self, draft: Draft, rows: Sequence[LinkRow]) -> Rendered:
        """
        Put the minted links in (C{rows}: one per L{Draft.link_requests},
        in order) and make the message.
        """
        subject, text, html = draft.subject, draft.text, draft.html
        expected = len(draft.requests) + (draft.unsubscribe is not None)
        if len(rows) != expected:
            raise ComposeError(f"{expected} links to put in, {len(rows)} minted")
        unsubscribe_url = unsubscribe_token = None
        if rows:
            # encoding a token is the costly part (hashids): once per link
            tokens = [self.links.token(row) for row in rows]
            base = self.links.public_url
            urls = [f"{base}/{ROUTES[row.purpose]}/{token}" for row, token in zip(rows, tokens)]
            pairs = list(zip(draft.placeholders, urls))
            if draft.unsubscribe is not None:
                unsubscribe_url = _check_uri(urls[-1])
                unsubscribe_token = tokens[-1]
                pairs.append((draft.unsubscribe_placeholder, unsubscribe_url))
            for placeholder, url in pairs:
                subject = subject.replace(placeholder, url)
                text = text.replace(placeholder, url)
                if html is not None:
                    html = html.replace(placeholder, str(escape(url)))
        prefix = draft.placeholder_prefix  # lower case: a filter may have changed the case
        if prefix and any(prefix in part.lower() for part in (subject, text, html or "")):
            raise ComposeError("a link() result was changed in the template (by a filter or "
                               "slicing); use {{ link(...) }} as it is")

        token = self.new_token()
        message_id = f"<{token}@{self.relay_domain}>"
        envelope_from = f"bounces+{token}@{self.relay_domain}"
        lines = [
            self.from_header,
            address_header("To", draft.display_name, draft.recipient),
            encoded_header("Subject", subject),
            f"Date: {self._date_header()}",
            f"Message-ID: {message_id}",
            "MIME-Version: 1.0",
            "Auto-Submitted: auto-generated",
        ]
        if unsubscribe_url is not None:
            mailto = _check_uri(f"mailto:unsubscribe+{unsubscribe_token}@{self.relay_domain}")
            lines.append(f"List-Unsubscribe: <{unsubscribe_url}>,\n <{mailto}>")
            lines.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
        head = "\n".join(lines) + "\n"

        text_cte, text_bytes = encode_text_part(text)
        if html is None:
            data = head.encode("ascii") + text_part_headers("plain", text_cte) + text_bytes
        else:
            html_cte, html_bytes = encode_text_part(html)
            boundary = f"=_emaild_{token}"
            data = b"".join([
                head.encode("ascii"),
                f'Content-Type: multipart/alternative; boundary="{boundary}"\n\n'.encode("ascii"),
                f"--{boundary}\n".encode("ascii"),
                text_part_headers("plain", text_cte), text_bytes,
                f"--{boundary}\n".encode("ascii"),
                text_part_headers("html", html_cte), html_bytes,
                f"--{boundary}--\n".encode("ascii"),
            ])
        return Rendered(draft.recipient, envelope_from, message_id, subject, data,
                        draft.person_id, draft.course_id, draft.kind, unsubscribable=unsubscribe_url is not None)
