"""
Render a template for one recipient into a complete RFC 5322 message.

Templates come in threes: C{<name>.subject.txt}, C{<name>.txt} and,
optionally, C{<name>.html}; with an HTML part the message is
multipart/alternative.  The message is assembled by hand rather than with
C{email.message} because enqueueing 100,000 of them must take seconds, and
every header value that can carry user data goes through L{header_text} and
L{email.utils.formataddr}, so no value can start a new header line.

Stored messages use LF line endings; transports convert to CRLF on the wire.
"""

from __future__ import annotations

import binascii
import re
import secrets
import time
from email.header import Header
from email.utils import formataddr, formatdate
from typing import Any, Callable, Mapping

import attrs
import jinja2

#: What we accept as a recipient: a plain ASCII addr-spec (no SMTPUTF8, no
#: quoted local parts, no source routes).  Anything else is refused at
#: enqueue time with a reason, never sent to the relay.
_ADDRESS = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}"
    r"@(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
_WHITESPACE = re.compile(r"\s+")
_NEWLINES = re.compile(r"\r\n?")


class ComposeError(ValueError):
    """
    This recipient's message cannot be made; the message says why (bad
    address, missing template, a template error or missing value).
    """


def check_address(address: str) -> str:
    """
    Return C{address} stripped, or raise L{ComposeError} saying what is wrong.
    """
    if not isinstance(address, str):
        raise ComposeError(f"recipient must be a string, got {address!r}")
    stripped = address.strip()
    if not stripped:
        raise ComposeError("recipient address is empty")
    if not _ADDRESS.match(stripped) or ".." in stripped or stripped.startswith("."):
        raise ComposeError(f"{address!r} is not a valid e-mail address")
    return stripped


def header_text(value: Any) -> str:
    """
    One line of header text: every run of whitespace, CR and LF included,
    becomes a single space, so user data cannot add header lines.
    """
    return _WHITESPACE.sub(" ", str(value)).strip()


def _encoded_header(name: str, value: str) -> str:
    value = header_text(value)
    if value.isascii() and "=?" not in value and len(name) + 2 + len(value) <= 78:
        return f"{name}: {value}"  # the common case, without email.header's cost
    charset = "us-ascii" if value.isascii() else "utf-8"
    return f"{name}: " + Header(value, charset, header_name=name).encode(linesep="\n")


def _address_header(name: str, display: Any, address: str) -> str:
    display = header_text(display) if display else ""
    return f"{name}: " + formataddr((display, address), charset="utf-8")


def normalise_newlines(text: str) -> str:
    text = _NEWLINES.sub("\n", text)
    return text if text.endswith("\n") else text + "\n"


def _body_part(text: str) -> tuple[str, bytes]:
    """
    (Content-Transfer-Encoding, encoded bytes) for a text part: 7bit when the
    text is ASCII with lines within RFC 5322's 998, else quoted-printable.
    """
    raw = normalise_newlines(text).encode("utf-8")
    if raw.isascii() and max(map(len, raw.split(b"\n"))) <= 998:
        return "7bit", raw
    encoded = binascii.b2a_qp(raw, quotetabs=False, istext=True, header=False)
    return "quoted-printable", encoded if encoded.endswith(b"\n") else encoded + b"\n"


def _part_headers(subtype: str, cte: str) -> bytes:
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\n'
        f"Content-Transfer-Encoding: {cte}\n\n"
    ).encode("ascii")


@attrs.frozen
class Rendered:
    recipient: str
    envelope_from: str
    message_id: str
    subject: str
    data: bytes


class Composer:
    """
    @param env: the e-mail Jinja2 environment (see L{emaild.templating}).
    @param globals_: extra names every template sees (site URL, helpers).
    """

    def __init__(
        self,
        env: jinja2.Environment,
        relay_domain: str,
        from_address: str,
        from_name: str = "",
        clock: Callable[[], float] = time.time,
        globals_: Mapping[str, Any] | None = None,
    ):
        self.env = env
        self.relay_domain = relay_domain
        self.from_header = _address_header("From", from_name, from_address)
        self.clock = clock
        self.globals = dict(globals_ or {})

    def templates(self, name: str) -> tuple[jinja2.Template, jinja2.Template, jinja2.Template | None]:
        """
        The (subject, text, html-or-None) templates called C{name}.
        """
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

    def template_names(self) -> list[str]:
        return sorted(
            n[: -len(".subject.txt")] for n in self.env.list_templates()
            if n.endswith(".subject.txt")
        )

    def render(self, template: str, recipient: str, context: Mapping[str, Any] | None = None) -> Rendered:
        """
        @raise ComposeError: bad address, missing template, or a template that
            fails for this context (e.g. a value it needs is missing).
        """
        recipient = check_address(recipient)
        subject_t, text_t, html_t = self.templates(template)
        values = {**self.globals, **(context or {}), "recipient": recipient}
        try:
            subject = header_text(subject_t.render(values))
            text = text_t.render(values)
            html = html_t.render(values) if html_t is not None else None
        except jinja2.UndefinedError as e:
            raise ComposeError(f"template {template!r}: {e.message} (missing from the context)") from None
        except Exception as e:
            raise ComposeError(f"template {template!r} failed: {e}") from None

        token = secrets.token_hex(10)
        message_id = f"<{token}@{self.relay_domain}>"
        envelope_from = f"bounces+{token}@{self.relay_domain}"
        head = "\n".join([
            self.from_header,
            _address_header("To", values.get("name"), recipient),
            _encoded_header("Subject", subject),
            f"Date: {formatdate(self.clock(), usegmt=True)}",
            f"Message-ID: {message_id}",
            "MIME-Version: 1.0",
            "Auto-Submitted: auto-generated",
        ]) + "\n"

        text_cte, text_bytes = _body_part(text)
        if html is None:
            data = head.encode("ascii") + _part_headers("plain", text_cte) + text_bytes
        else:
            html_cte, html_bytes = _body_part(html)
            boundary = f"=_emaild_{token}"
            data = b"".join([
                head.encode("ascii"),
                f'Content-Type: multipart/alternative; boundary="{boundary}"\n\n'.encode("ascii"),
                f"--{boundary}\n".encode("ascii"),
                _part_headers("plain", text_cte), text_bytes,
                f"--{boundary}\n".encode("ascii"),
                _part_headers("html", html_cte), html_bytes,
                f"--{boundary}--\n".encode("ascii"),
            ])
        return Rendered(recipient, envelope_from, message_id, subject, data)
