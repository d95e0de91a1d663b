"""
The real-world corpus (tests/corpus) through the real daemon: each message
is sent with smtplib to a member's reply address and is either refused
with a clear SMTP reply or stored and then relayed or ignored with a
reason; never a 4xx, a crash, or a message left unprocessed.  No copy
carries a member's real address.

Then generated variants of the corpus's hiding places: every member address
in every encoding (nested percent-encoding, HTML references, QP, base64,
encoded words, IDN forms...), in every kind of part, charset and transfer
encoding, through the real rewrite; a decoder of the test's own counts the
members' addresses left in the copies, and the count must be 0.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import html
import json
import re
import smtplib
import unicodedata
import urllib.parse
from email.header import decode_header, make_header
from pathlib import Path

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from emaild.inbound.classify import parse_message
from emaild.inbound.rewrite import build_copy, prepare, scrub_map
from emaild.inbound.server import DATA_LINE_LIMIT
from emaild.service import Emaild
from tests.dnsserver import ZoneServer, txt
from tests.inbound.test_inbound_end_to_end import _free_port
from tests.inbound.test_inbound_rewrite import EXPECTED, LOOP
from tests.support import DatabaseTestCase, wait_for

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
DOMAIN = "relay.course.test"
MEMBERS = {"ada@example.org": "Ada Lovelace", "bob@example.net": "Bob Babbage",
           "carol@example.com": "Carol Shaw"}


def _send(port: int, mail_from: str, to: str, data: bytes):
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("mx.example.net")
        client.mail(mail_from)
        client.rcpt(to)
        try:
            return client.data(data)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error


class CorpusTests(DatabaseTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_every_corpus_message_ends_relayed_ignored_or_refused(self):
        yield defer.ensureDeferred(self._scenario())

    async def _scenario(self):
        smtp_port = _free_port()
        # the members' domains vouch for this server (SPF), so that what is
        # tested here is the relay, not sender authentication
        zones = {d: {d: [txt("v=spf1 ip4:127.0.0.1 -all")]}
                 for d in ("example.org", "example.net", "example.com")}
        dns_server = ZoneServer("example.org", zones.pop("example.org"), zones)
        dns_port = dns_server.start()
        self.addCleanup(dns_server.stop)
        service = Emaild(self.config(
            http={"endpoint": "tcp:0:interface=127.0.0.1"},
            smtp={"endpoint": f"tcp:{smtp_port}:interface=127.0.0.1", "relay_domain": DOMAIN},
            relay={"poll_interval": "0.5s"}, dns={"servers": [f"127.0.0.1:{dns_port}"]}),
            reactor)
        service.startService()
        self.addCleanup(service.stopService)
        await service.ready
        web = service.web
        course = await web.people.ensure_course("", "phys", "Physics 101")
        group_id = await web.people.ensure_group(course, "Study Group")
        reply = {}
        for address, name in MEMBERS.items():
            person = await web.people.add(address, name)
            await web.people.join_group(group_id, person.id)
            member = await web.groups.member(group_id, person.id)
            reply[address] = web.reply_addresses.address(member.token)

        outcomes = {}
        for name, (mail_from, relayed) in sorted(EXPECTED.items()):
            to = reply.get(mail_from.lower(), reply["ada@example.org"])
            raw = (CORPUS / name).read_bytes()
            code, text = await threads.deferToThread(_send, smtp_port, mail_from, to, raw)
            outcomes[name] = (code, text.decode("utf-8", "replace"))
            if max(len(line) for line in raw.split(b"\n")) + 2 > DATA_LINE_LIMIT:
                # a line far beyond RFC 5322's 998 octets: answered, connection closed
                self.assertEqual((code, text), (500, b"5.5.6 Line too long"), name)
                continue
            self.assertIn(code, (250, 550), f"{name}: {code} {text!r}")
            if code == 550:
                self.assertIn(b"5.7.1", text)
                self.assertFalse(relayed, f"{name} should have been relayed: {text!r}")

        stored = [name for name, (code, _) in outcomes.items() if code == 250]
        await wait_for(lambda: self.query(
            "SELECT count(*) FROM inbound_recipients WHERE state = 'received'")[0][0] == 0,
            timeout=60)
        rows = self.query("SELECT r.state, r.reason FROM inbound_recipients r ORDER BY r.id")
        self.assertEqual(len(rows), len(stored))
        for name, (state, reason) in zip(stored, rows):
            expected = "done" if EXPECTED[name][1] else "ignored"
            self.assertEqual(state, expected, f"{name}: {reason}")
            self.assertTrue(reason, name)
        relayed = [n for n, (_, r) in EXPECTED.items()
                   if r and outcomes[n][0] != 500]
        self.assertEqual(sorted(n for n in stored if EXPECTED[n][1]), sorted(relayed))
        for (body,) in self.query("SELECT body FROM outbox"):
            for address in MEMBERS:
                self.assertNotIn(address.encode(), bytes(body).lower())
        self.assertEqual(self.query("SELECT count(*) FROM outbox")[0][0], 2 * len(relayed))


# -- generated variants: every member address in every encoding, in every kind
# of part, through the real rewrite; counted by a decoder of the test's own ---
VARIANT_MEMBERS = [("ada@example.org", "Ada Lovelace"), ("Bob@Example.NET", "Bob"),
                   ("carol.shaw@example.com", "Carol"), ("zoë@bücher.example", "Zoë"),
                   ("dan@xn--mnchen-3ya.example", "Dan"), ("o'brien@example.ie", "Pat")]
#: text that resembles a member's address but is someone else's: left alone
LOOKALIKES = ["adam@example.org", "ada@example.com", "bobby@example.net"]


def _pct(text: str, times: int = 1) -> str:
    for _ in range(times):
        text = urllib.parse.quote(text, safe="")
    return text


def _other_domain_form(address: str) -> str:
    local, _, domain = address.rpartition("@")
    if domain.isascii():
        return f"{local}@{domain.encode('ascii').decode('idna')}"
    return f"{local}@{domain.encode('idna').decode('ascii')}"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _split(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain


#: name -> how the address is written
ENCODINGS = {
    "plain": lambda a: a,
    "upper": lambda a: a.upper(),
    "percent": lambda a: _pct(a),
    "percent every byte": lambda a: "".join(f"%{b:02X}" for b in a.encode()),
    "percent twice": lambda a: _pct(a, 2),
    "percent thrice": lambda a: _pct(a, 3),
    "link wrapper": lambda a: ("https://safelinks.example/?url="
                               + _pct("https://x.example/r?u=" + _pct("mailto:" + a), 1)
                               + "&data=05"),
    "link wrapper nested": lambda a: ("https://wrapper.example/?u="
                                      + _pct("https://inner.example/?go=" + _pct("mailto:" + a), 2)),
    "entity decimal": lambda a: a.replace("@", "&#64;"),
    "entity hex": lambda a: a.replace("@", "&#x40;"),
    "entity zeros": lambda a: a.replace("@", "&#00064;"),
    "entity no semicolon": lambda a: a.replace("@", "&#64"),
    "entity named": lambda a: a.replace("@", "&commat;").replace(".", "&period;"),
    "entity every char": lambda a: "".join(f"&#{ord(c)};" for c in a),
    "entity mixed": lambda a: _split(a)[0] + "&#x40;" + _split(a)[1].replace(".", "&period;"),
    "entity twice": lambda a: a.replace("@", "&amp;#64;"),
    "percent of entity": lambda a: a.replace("@", "%26%2364%3B"),
    "entity of percent": lambda a: a.replace("@", "&#37;40"),
    "quoted-printable in text": lambda a: a.replace("@", "=40"),
    "javascript escape": lambda a: a.replace("@", "\\u0040"),
    "invisible characters": lambda a: a.replace("@", "\u200b@\u2060"),
    "full-width at": lambda a: a.replace("@", "\uff20"),
    "quoted local part": lambda a: '"' + _split(a)[0] + '"@' + _split(a)[1],
    "[at] [dot]": lambda a: _split(a)[0] + " [at] " + _split(a)[1].replace(".", " [dot] "),
    "(at) (dot)": lambda a: _split(a)[0] + " (at) " + _split(a)[1].replace(".", " (dot) "),
    "mailto with query": lambda a: f"mailto:{a}?subject=Hi%20there&cc={_pct(a)}",
    "angle brackets": lambda a: f"Someone Else <{a}>",
    "escaped angle brackets": lambda a: f"&lt;{a}&gt;",
    "other IDN form": _other_domain_form,
    "encoded word": lambda a: f"=?utf-8?b?{_b64(a)}?=",
    "data URL": lambda a: "data:text/plain;base64," + _b64("write to " + a),
    "data URL, any case": lambda a: "DATA:text/plain;Base64," + _b64("write to " + a),
}


def _body(data: bytes, cte: str) -> bytes:
    if cte == "base64":
        return base64.encodebytes(data)
    if cte == "quoted-printable":
        return binascii.b2a_qp(data)
    return data


def _leaf(kind: str, charset: str, cte: str, text: str, extra: str = "") -> bytes:
    head = (f"Content-Type: {kind}; charset={charset}\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n{extra}\r\n")
    return head.encode() + _body(text.encode(charset), cte)


def _multipart(subtype: str, parts: list[bytes]) -> bytes:
    boundary = f"=_b{len(parts)}_{subtype}"
    out = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
    for p in parts:
        out += f"--{boundary}\r\n".encode() + p + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _html(lines: list[str]) -> str:
    return "".join(f'<p>{s} <a href="{s}">link</a> <img src="{s}" title="{s}"></p>\n'
                   for s in lines)


def _inner_message(lines: list[str]) -> bytes:
    return ("From: " + ", ".join(lines) + "\r\nSubject: fwd " + " ".join(lines)
            + "\r\nX-Original-To: " + lines[0] + "\r\nContent-Type: text/plain; charset=utf-8"
            "\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + "\r\n".join(lines) + "\r\n").encode()


def _plain(charset, cte):
    return lambda lines: _leaf("text/plain", charset, cte, "\n".join(lines) + "\n")


#: name -> the entity (after the top-level headers) that carries the lines
CARRIERS = {
    "plain utf-8 8bit": _plain("utf-8", "8bit"),
    "plain utf-8 quoted-printable": _plain("utf-8", "quoted-printable"),
    "plain utf-8 base64": _plain("utf-8", "base64"),
    "plain iso-8859-1 quoted-printable": _plain("iso-8859-1", "quoted-printable"),
    "plain windows-1252 base64": _plain("windows-1252", "base64"),
    "plain utf-16 base64": _plain("utf-16", "base64"),
    "plain iso-2022-jp 7bit": _plain("iso-2022-jp", "7bit"),
    "html utf-8 quoted-printable": lambda lines: _leaf("text/html", "utf-8", "quoted-printable",
                                                       _html(lines)),
    "html windows-1252 base64": lambda lines: _leaf("text/html", "windows-1252", "base64",
                                                    _html(lines)),
    "alternative": lambda lines: _multipart("alternative", [
        _plain("utf-8", "base64")(lines), _leaf("text/html", "utf-8", "8bit", _html(lines))]),
    "nested mixed with attachments": lambda lines: _multipart("mixed", [
        _multipart("alternative", [_plain("utf-8", "quoted-printable")(lines),
                                   _leaf("text/html", "utf-8", "base64", _html(lines))]),
        _leaf("application/json", "utf-8", "base64", json.dumps({"to": lines}),
              "Content-Disposition: attachment; filename=\"to.json\"\r\n"),
        _leaf("text/calendar", "utf-8", "quoted-printable",
              "BEGIN:VCALENDAR\nORGANIZER:mailto:" + lines[0] + "\nEND:VCALENDAR\n")]),
    "attached message": lambda lines: _multipart("mixed", [
        _plain("utf-8", "7bit")(["see below"]),
        b"Content-Type: message/rfc822\r\n\r\n" + _inner_message(lines)]),
    "attached message in base64": lambda lines: _multipart("mixed", [
        _plain("utf-8", "7bit")(["see below"]),
        b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(_inner_message(lines))]),
    "headers and parameters": lambda lines: _multipart("mixed", [
        _leaf("text/plain", "utf-8", "7bit", "hello\n",
              f'Content-Description: {" ".join(lines)}\r\n'.replace("\r\n\r\n", "\r\n")),
        ("Content-Type: application/octet-stream; name=\"=?utf-8?b?"
         + _b64(lines[0]) + "?=\"\r\nContent-Disposition: attachment; filename*=utf-8''"
         + urllib.parse.quote(" ".join(lines)) + "\r\nContent-Transfer-Encoding: base64"
         "\r\n\r\nAAECAw==\r\n").encode()]),
}


def _message(lines: list[str], entity: bytes) -> bytes:
    subject = "=?utf-8?b?" + _b64("Re: " + " ".join(lines)[:200]) + "?="
    head = ("From: Ada <ada@example.org>\r\nTo: group@relay.example\r\nCc: " + lines[1]
            + f"\r\nSubject: {subject}\r\nMessage-ID: <v.1@example.org>\r\nMIME-Version: 1.0\r\n")
    return head.encode("utf-8") + entity


def _data_url(m) -> str:
    try:
        return base64.b64decode(m.group(1) + "==").decode("utf-8", "replace")
    except binascii.Error:
        return m.group(0)


def reads(text: str) -> str:
    """
    The test's own idea of what a reader reads: standard-library decoders
    applied until nothing changes, then the usual ways to spell @ and .
    """
    for _ in range(12):
        before = text
        text = html.unescape(text)
        text = urllib.parse.unquote(text)
        text = re.sub(r"=([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text)
        text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
        text = re.sub(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=",
                      lambda m: str(make_header(decode_header(m.group(0)))), text)
        text = re.sub(r"data:[^,\s\"'<>]*;base64,([A-Za-z0-9+/=]+)", _data_url, text,
                      flags=re.I)
        text = unicodedata.normalize("NFKC", text)
        text = re.sub("[\u00ad\u200b-\u200f\u2060-\u2064\ufeff]", "", text)
        if text == before:
            break
    text = re.sub(r"\s*[\[(]\s*at\s*[\])]\s*", "@", text, flags=re.I)
    text = re.sub(r"\s*[\[(]\s*dot\s*[\])]\s*", ".", text, flags=re.I)
    text = re.sub(r'"([^"\s]+)"@', r"\1@", text)
    return text.lower()


def everything_readable(data: bytes) -> list[str]:
    """Every header and part of a copy, decoded, and the raw bytes."""
    texts = [data.decode("latin-1"), data.decode("utf-8", "replace")]
    message = email.message_from_bytes(data, policy=email.policy.default)
    for part in message.walk():
        for name, value in part.raw_items():
            texts.append(f"{name}: {value}")
            try:
                texts.append(str(make_header(decode_header(value))))
                texts.append(str(part[name]))
            except Exception:  # noqa: BLE001 (what the stdlib cannot parse is read raw)
                pass
        texts += [str(p) for p in part.get_params() or []]
        try:
            texts.append(part.get_filename() or "")
        except Exception:  # noqa: BLE001
            pass
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            charset = part.get_content_charset() or "utf-8"
            try:
                texts.append(payload.decode(charset, "replace"))
            except LookupError:
                texts.append(payload.decode("utf-8", "replace"))
            if part.get_content_type() == "message/rfc822":
                texts += everything_readable(payload)
    return texts


def member_forms() -> dict[str, set[str]]:
    forms = {}
    for address, _ in VARIANT_MEMBERS:
        address = address.lower()
        forms[address] = {address, _other_domain_form(address).lower()}
    return forms


class GeneratedVariantTests(unittest.TestCase):
    """
    Each member's address in each encoding above, in each kind of part,
    charset and transfer encoding, through prepare() and build_copy():
    no copy holds one, by a decoder that shares no code with the relay's.
    """

    def relay(self, raw: bytes) -> bytes:
        prepared = prepare(parse_message(raw), scrub_map(VARIANT_MEMBERS),
                           author="ada@example.org")
        return build_copy(prepared, author=prepared.author, group_name="Study Group",
                          reply_address="group-r3c1p@relay.example",
                          message_id="<copy.1@relay.example>", in_reply_to=[], references=[],
                          list_id="g7.relay.example",
                          unsubscribe_url="https://course.example.org/u/Tk3",
                          unsubscribe_mailto="unsubscribe+Tk3@relay.example", loop_value=LOOP)

    def test_no_member_address_in_any_copy(self):
        forms = member_forms()
        found, checked = [], 0
        for encoding, write in ENCODINGS.items():
            lines = [f"write to {write(a)} now" for a, _ in VARIANT_MEMBERS]
            lines += [f"not a member: {write(a)}" for a in LOOKALIKES]
            for carrier, build in CARRIERS.items():
                try:
                    entity = build(lines)
                except UnicodeEncodeError:
                    continue  # a character this charset cannot carry
                data = self.relay(_message(lines, entity))
                checked += 1
                for text in everything_readable(data):
                    read = reads(text)
                    found += [(encoding, carrier, address) for address, spellings in forms.items()
                              if any(s in read for s in spellings)]
        self.assertGreater(checked, len(ENCODINGS) * len(CARRIERS) * 3 // 4)
        self.assertEqual(len(found), 0, sorted(set(found))[:20])

    def test_no_member_address_in_copies_of_the_corpus(self):
        # the same count over the real-world files, and over each of them
        # with every address in it percent-encoded twice and as &#x40;
        members = list(MEMBERS.items())
        found = []
        for name, (_, relayed) in sorted(EXPECTED.items()):
            if not relayed:
                continue
            raw = (CORPUS / name).read_bytes()
            variants = {"as is": raw}
            for label, at in (("%2540", b"%2540"), ("&#x40;", b"&#x40;")):
                variants[label] = re.sub(rb"(?i)(ada|bob|carol)@(example\.(?:org|net|com))",
                                         lambda m, at=at: m.group(1) + at + m.group(2), raw)
            for label, data in variants.items():
                prepared = prepare(parse_message(data), scrub_map(members), author="Ada")
                copy = build_copy(prepared, author=prepared.author, group_name="G",
                                  reply_address="group-r3c1p@relay.example",
                                  message_id="<copy.1@relay.example>", in_reply_to=[],
                                  references=[], list_id="g7.relay.example",
                                  unsubscribe_url=None, unsubscribe_mailto=None, loop_value=LOOP)
                for text in everything_readable(copy):
                    read = reads(text)
                    found += [(name, label, a) for a in MEMBERS if a in read]
        self.assertEqual(found, [])

    def test_lookalikes_are_left_alone(self):
        lines = [f"not a member: {a}" for a in LOOKALIKES]
        for carrier in ("plain utf-8 quoted-printable", "html utf-8 quoted-printable",
                        "attached message"):
            read = reads(" ".join(everything_readable(self.relay(
                _message(["x", "y"], CARRIERS[carrier](lines))))))
            for address in LOOKALIKES:
                self.assertIn(address, read, carrier)

    def test_display_name_that_is_an_address_becomes_neutral(self):
        for name in ("ada@example.org", "Ada <ada@example.org>", "ada&#64;example.org",
                     "ada [at] example [dot] org", "zed@elsewhere.example", "ada＠example.org"):
            prepared = prepare(parse_message(_message(["x", "y"], _plain("utf-8", "7bit")(["hi"]))),
                               scrub_map(VARIANT_MEMBERS), author=name)
            copy = email.message_from_bytes(
                build_copy(prepared, author=prepared.author, group_name="Study Group",
                           reply_address="group-r3c1p@relay.example",
                           message_id="<copy.1@relay.example>", in_reply_to=[], references=[],
                           list_id="g7.relay.example", unsubscribe_url=None,
                           unsubscribe_mailto=None, loop_value=LOOP),
                policy=email.policy.default)
            for header in ("From", "Reply-To"):
                (shown,) = copy[header].addresses
                self.assertEqual(shown.display_name, "A group member via Study Group",
                                 (name, header))
