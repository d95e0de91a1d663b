"""
Turn a member's post into the copies the group receives.

L{prepare} runs once per post: it takes every member's real address out of
the Subject, the text parts (at any depth) and the headers of attached
messages, and serialises the MIME entity itself.  L{build_copy} runs once
per recipient and only puts our own headers in front, so the costly part
is not repeated for every member.

The entity is written by hand rather than with C{email.generator}: the
generator keeps whatever the sender got wrong (8-bit bytes, 5,000-byte
lines, a missing closing boundary) and re-folds headers in ways that have
raised on odd input.  Here every part that is not already 7-bit clean is
re-encoded, parts we did not change are copied byte for byte, and only
headers that needed scrubbing are re-encoded.
"""

from __future__ import annotations

import base64
import functools
import re
import secrets
import urllib.parse
from email.header import Header, decode_header, make_header
from email.utils import format_datetime, parsedate_to_datetime
from typing import Iterable, Mapping

import attrs

from emaild.inbound.classify import LOOP_HEADER, content_type, header_value, parse_message
from emaild.inbound.mime import CRLF, crlf_bytes, decode_text, encode_text, lines_ok
from emaild.inbound.scrub import (  # noqa: F401 (API)
    ANONYMOUS,
    ANONYMOUS_NAME,
    CONTROL,
    Scrubber,
    clean,
    scrub_map,
    shown_name,
    usable_name,
)
from emaild.mailformat.addresses import check_address
from emaild.mailformat.headers import address_header, check_header_uri, encoded_header

#: what the top-level entity keeps of the original header (everything else
#: could identify the sender: Received, DKIM, X-Originating-IP, ...)
_CONTENT_HEADERS = ("mime-version", "content-type", "content-transfer-encoding",
                    "content-disposition", "content-language", "content-id")
#: headers whose value is an id; an address in them becomes a token, not a name
_ID_HEADERS = ("message-id", "content-id", "in-reply-to", "references", "resent-message-id")
_TYPE = re.compile(r"[a-z0-9!#$&.+^_-]{1,60}/[a-z0-9!#$&.+^_-]{1,100}")
_MSG_ID = re.compile(r"<[!-;=?-~]{1,250}>")
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]")
def _decoded_header(raw: str) -> str:
    try:
        return str(make_header(decode_header(raw)))
    except Exception:
        return raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _crlf(text: str) -> str:
    if "\r" not in text:  # the usual case: a plain replace does it
        return text.replace("\n", "\r\n")
    return re.sub(r"\r\n|\r|\n", "\r\n", text)


def _header_line(name: str, value: str) -> str:
    """
    One header from text, through the shared encoder; a value with a word
    too long to fold goes out as UTF-8 encoded words, which can be split.
    """
    value = clean(value)
    line = encoded_header(name, value)
    if max(map(len, line.split("\n"))) > 998:
        line = f"{name}: " + Header(value, "utf-8", header_name=name).encode(linesep="\n")
    return _crlf(line)


def _param_value(main: str, params: Iterable[tuple[str, str]]) -> str:
    parts = [main]
    for key, value in params:
        if not re.fullmatch(r"[A-Za-z0-9!#$&+.^_`|~-]{1,60}", key):
            continue
        value = CONTROL.sub(" ", str(value))
        if value.isascii() and len(value) <= 900:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{key}="{escaped}"')
        else:
            # RFC 2231: what modern readers take for non-ASCII file names
            parts.append(f"{key}*=utf-8''" + urllib.parse.quote(value[:250], safe=""))
    return ";\r\n\t".join(parts)


def _params(part, header: str) -> list[tuple[str, str]]:
    try:
        return [(k, str(v)) for k, v in part[header].params.items()]
    except Exception:
        return []


class _Writer:
    def __init__(self, scrubber: Scrubber):
        self.scrubber = scrubber

    def header(self, name: str, raw: str, part) -> str:
        lname = name.lower()
        raw = raw if isinstance(raw, str) else str(raw)
        decoded = _decoded_header(raw)
        dirty = self.scrubber.found(raw) or self.scrubber.found(decoded)
        if not dirty and raw.isascii() and not CONTROL.search(re.sub(r"[\t\r\n]", "", raw)) \
                and all(len(line) + len(name) + 2 <= 998 for line in raw.splitlines()):
            return f"{name}: {_crlf(raw)}"
        if lname in ("content-type", "content-disposition"):
            try:
                main = (self.kind(part) if lname == "content-type"
                        else str(part[name].content_disposition or "").lower())
                if lname == "content-disposition" and main not in ("inline", "attachment"):
                    main = "attachment"
                scrubbed = [(k, self.scrubber.text(v)) for k, v in _params(part, name)]
                return f"{name}: {_param_value(main, scrubbed)}"
            except Exception:
                pass
        return _header_line(name, self.scrubber.text(decoded, ident=lname in _ID_HEADERS))

    def params(self, part, leave_out: tuple[str, ...]) -> list[tuple[str, str]]:
        """The Content-Type parameters but C{leave_out}, scrubbed (name= can hold an address)."""
        return [(k, self.scrubber.text(v)) for k, v in _params(part, "content-type")
                if k.lower() not in leave_out]

    def headers(self, part, top: bool, overrides: dict[str, str]) -> bytes:
        lines, done = [], set()
        if top:
            lines.append("MIME-Version: 1.0")
            done.add("mime-version")
        for name, raw in part.raw_items():
            lname = name.lower()
            if not re.fullmatch(r"[!-9;-~]+", name) or (top and lname not in _CONTENT_HEADERS) \
                    or self.scrubber.found(name):
                continue
            if lname in overrides or (lname in done and lname in _CONTENT_HEADERS):
                continue
            done.add(lname)
            lines.append(self.header(name, raw, part))
        for lname, value in overrides.items():
            lines.append(f"{'-'.join(w.capitalize() for w in lname.split('-'))}: {value}")
        return "".join(line + "\r\n" for line in lines).encode("ascii", "replace")

    def kind(self, part) -> str:
        kind = content_type(part)
        # a type that is not one (or holds an address) is read as text
        return kind if _TYPE.fullmatch(kind) and not self.scrubber.found(kind) else "text/plain"

    def entity(self, part, top: bool = False) -> bytes:
        overrides: dict[str, str] = {}
        kind = self.kind(part)
        payload = getattr(part, "_payload", None)
        if isinstance(payload, list) and kind.startswith("message/"):
            body = self.message_body(payload, kind)
            overrides["content-transfer-encoding"] = "7bit"
        elif isinstance(payload, list):
            body = self.multipart(part, kind, payload, overrides)
        elif kind in ("message/rfc822", "message/global"):
            # an attached message the sender base64-encoded: open it up
            inner = parse_message(self.decoded(part))
            body = self.entity(inner)
            overrides["content-type"] = "message/rfc822"
            overrides["content-transfer-encoding"] = "7bit"
        elif kind.startswith("text/") or kind.startswith("multipart/") or kind.startswith("message/"):
            body = self.text(part, kind, overrides)
        else:
            body = self.binary(part, overrides)
        return self.headers(part, top, overrides) + CRLF + body

    def message_body(self, payload: list, kind: str) -> bytes:
        if kind in ("message/rfc822", "message/global") and payload:
            return self.entity(payload[0])
        # message/delivery-status and the like: blocks of fields
        return CRLF.join(self.headers(block, False, {}) for block in payload
                         if hasattr(block, "raw_items"))

    def multipart(self, part, kind: str, payload: list, overrides: dict[str, str]) -> bytes:
        children = [self.entity(child) for child in payload if hasattr(child, "raw_items")]
        preamble = self.loose_text(part.preamble)
        epilogue = self.loose_text(part.epilogue)
        boundary = part.get_boundary() or ""
        everything = b"".join(children) + preamble + epilogue
        if not _BOUNDARY.fullmatch(boundary) or b"--" + boundary.encode() in everything:
            boundary = f"=_emaild_{secrets.token_hex(12)}"
            params = self.params(part, ("boundary",))
            overrides["content-type"] = _param_value(kind, [*params, ("boundary", boundary)])
        if part.get("content-transfer-encoding", "7bit").strip().lower() not in ("7bit", ""):
            overrides["content-transfer-encoding"] = "7bit"
        delimiter = b"--" + boundary.encode("ascii")
        body = [preamble] if preamble else []
        for child in children:
            body += [delimiter, CRLF, child, CRLF]
        body += [delimiter, b"--", CRLF, epilogue]
        return b"".join(body)

    def loose_text(self, text: str | None) -> bytes:
        if not text:
            return b""
        text = self.scrubber.text(text.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
        lines = [line[i:i + 900] for line in re.split(r"\r\n|\r|\n", text)
                 for i in range(0, max(len(line), 1), 900)]
        return crlf_bytes("\n".join(lines).encode("ascii", "replace"))

    @staticmethod
    def raw(part) -> bytes:
        # the bytes as they arrived: get_payload() would decode 8-bit ones
        # with the declared charset (and raise on some charset names)
        payload = getattr(part, "_payload", None)
        if isinstance(payload, bytes):
            return payload
        return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""

    def decoded(self, part) -> bytes:
        raw = self.raw(part)
        if str(part.get("content-transfer-encoding", "")).strip().lower() == "base64":
            letters = re.sub(rb"\s", b"", raw)
            junk = len(re.sub(rb"[A-Za-z0-9+/=]", b"", letters))
            if junk * 10 > len(letters):
                return raw  # labelled base64 but plainly is not: the text is the bytes
        try:
            data = part.get_payload(decode=True)
        except Exception:
            data = None
        return data if isinstance(data, bytes) else raw

    def text(self, part, kind: str, overrides: dict[str, str]) -> bytes:
        raw = self.raw(part)
        declared = part.get_content_charset()
        text = decode_text(self.decoded(part), declared)
        html_ = kind in ("text/html", "application/xhtml+xml")
        scrubbed, found = self.scrubber.scrub(text, html_)
        # the bytes as they came, when nothing in them reads as an address:
        # 7-bit text that is the part's text read above only needs the
        # search for addresses as written (its reading was just searched)
        if not found and lines_ok(raw) and not self.scrubber.found_literal(raw) and (
                raw.decode("ascii") == text or not self.scrubber.found_bytes(raw)):
            return crlf_bytes(raw)
        charset, cte, body = encode_text(scrubbed, declared)
        if self.scrubber.found_bytes(body):
            # "=1B" + "ob@example.net" reads as bob@example.net in the bytes
            cte, body = "base64", crlf_bytes(base64.encodebytes(scrubbed.encode(charset)))
        if not kind.startswith("text/"):
            kind = "text/plain"  # a multipart without a boundary, an odd message/*
        params = self.params(part, ("charset", "boundary"))
        overrides["content-type"] = _param_value(kind, [("charset", charset), *params])
        overrides["content-transfer-encoding"] = cte
        return body

    def binary(self, part, overrides: dict[str, str]) -> bytes:
        raw = self.raw(part)
        data = self.decoded(part)
        # untouched, byte for byte, if it is 7-bit clean and shows no address
        keep = lines_ok(raw) and not self.scrubber.found_bytes(raw)
        if self.scrubber.found_bytes(data) and b"\0" not in data:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text is not None:
                # JSON, XML, calendar files sent as application/*: the address
                # is plain to see, so it goes like in a text part
                data = self.scrubber.text(text).encode("utf-8")
                keep = False
        if keep:
            return crlf_bytes(raw)
        overrides["content-transfer-encoding"] = "base64"
        return crlf_bytes(base64.encodebytes(data))


@attrs.frozen
class Prepared:
    subject: str
    date: str | None
    original_message_id: str | None
    in_reply_to: list[str]
    references: list[str]
    entity: bytes
    #: the author's name as the copies show it (see L{Scrubber.display_name})
    author: str = ANONYMOUS_NAME


def _ids(value: str | None) -> list[str]:
    return _MSG_ID.findall(value or "")


def prepare(message, scrub: Mapping[str, str], author: str | None = None) -> Prepared:
    """
    The member-address-free subject and MIME entity of C{message}, the
    ids the processor maps to ours, and the C{author}'s name through the
    same scrubber (a name that is or holds an address becomes neutral).
    """
    scrubber = Scrubber(scrub)
    subject = clean(scrubber.text(header_value(message, "Subject") or ""))
    # as written: the policy's parsed form is empty when it cannot parse it
    date = next((clean(v) for k, v in message.raw_items() if k.lower() == "date"), None)
    message_ids = _ids(header_value(message, "Message-ID"))
    try:
        entity = _Writer(scrubber).entity(message, top=True)
    except Exception:
        # a structure we could not walk: send the text we can find, scrubbed
        # (base64, so no address can form in the encoded bytes)
        text = scrubber.text(decode_text(_Writer.raw(message), None))
        body = crlf_bytes(base64.encodebytes(text.encode("utf-8")))
        entity = (b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n"
                  b"Content-Transfer-Encoding: base64\r\n\r\n") + body
    return Prepared(subject, date.strip() if date else None,
                    message_ids[0] if message_ids else None,
                    _ids(header_value(message, "In-Reply-To")),
                    _ids(" ".join(filter(None, [header_value(message, "References")]))),
                    entity, scrubber.display_name(author) if author else ANONYMOUS_NAME)


def _date(value: str | None) -> str:
    written = _written_date(value)
    if written is not None:
        return written
    from email.utils import formatdate
    return formatdate(usegmt=True)


@functools.lru_cache(maxsize=256)
def _written_date(value: str | None) -> str | None:
    """
    The post's Date as every copy writes it, or None when it has none we
    can read (then each copy says now).  Remembered: each copy of a post
    to a big group asks again.
    """
    try:
        when = parsedate_to_datetime(value)
        if when is not None and 1970 < when.year < 10000:
            return format_datetime(when)
    except (TypeError, ValueError, IndexError, OverflowError):
        pass
    return None


#: the Subject line, the same for every copy of a post
_subject_line = functools.lru_cache(maxsize=1024)(lambda value: _header_line("Subject", value))


def _id_header(name: str, ids: list[str]) -> str | None:
    valid = [i for i in ids if isinstance(i, str) and _MSG_ID.fullmatch(i)]
    return f"{name}: " + "\r\n ".join(valid) if valid else None


def build_copy(prepared: Prepared, *, author: str, group_name: str, reply_address: str,
               message_id: str, in_reply_to: list[str], references: list[str], list_id: str,
               unsubscribe_url: str | None, unsubscribe_mailto: str | None,
               loop_value: str) -> bytes:
    """
    The complete message for one recipient (CRLF line endings).

    @raise ValueError: an argument we must not put in a header (a bad
        reply address, message id, list id or unsubscribe URI); every
        user-controlled text is encoded instead.
    """
    reply_address = check_address(reply_address)
    if not _MSG_ID.fullmatch(message_id or ""):
        raise ValueError(f"{message_id!r} is not a message id")
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,240}", list_id or ""):
        raise ValueError(f"{list_id!r} is not a list id")
    # a display name that is or holds an address (an LMS without names sends
    # the address as the name) would show it to every member: neutral instead
    author = shown_name(author, ANONYMOUS_NAME)
    group = shown_name(group_name, "the group")
    lines = [
        _crlf(address_header("From", f"{author} via {group}", reply_address)),
        _crlf(address_header("Reply-To", f"{author} via {group}", reply_address)),
        _crlf(address_header("To", group, reply_address)),
        _subject_line(prepared.subject),
        f"Date: {_date(prepared.date)}",
        f"Message-ID: {message_id}",
        _id_header("In-Reply-To", in_reply_to),
        _id_header("References", references),
        _crlf(address_header("List-Id", group, list_id)),
        f"List-Post: <mailto:{reply_address}>",
    ]
    targets = []
    if unsubscribe_url:
        targets.append(f"<{check_header_uri(unsubscribe_url)}>")
    if unsubscribe_mailto:
        mailto = unsubscribe_mailto if unsubscribe_mailto.startswith("mailto:") \
            else f"mailto:{unsubscribe_mailto}"
        targets.append(f"<{check_header_uri(mailto)}>")
    if targets:
        lines.append("List-Unsubscribe: " + ",\r\n ".join(targets))
    if unsubscribe_url:
        lines.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")
    lines.append("Precedence: list")
    loop = clean(loop_value)
    if not loop.isascii():
        raise ValueError("the loop value must be ASCII")
    lines.append(f"{LOOP_HEADER}: {loop}")
    head = "".join(line + "\r\n" for line in lines if line)
    return head.encode("ascii") + prepared.entity
