"""
Rewriting a member's post for the group (no database): the corpus end to
end, and the details (addresses in every form, charsets, line lengths,
header injection, broken MIME).
"""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

from twisted.trial import unittest

from emaild.inbound.classify import LOOP_HEADER, not_relayable, parse_message
from emaild.inbound.rewrite import (
    ANONYMOUS,
    ANONYMOUS_NAME,
    Prepared,
    Scrubber,
    build_copy,
    prepare,
    scrub_map,
)

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MEMBERS = [("ada@example.org", "Ada"), ("Bob@Example.NET", "Bob"), ("carol@example.com", "Carol")]
ADDRESSES = [a.lower() for a, _ in MEMBERS]
LOOP = "emaild-test"

#: file -> (envelope sender, relayed?)
EXPECTED = {
    "01-plain-reply.eml": ("ada@example.org", True),
    "02-gmail-alternative.eml": ("bob@example.net", True),
    "03-outlook-html-cp1252.eml": ("carol@example.com", True),
    "04-iso-8859-1.eml": ("ada@example.org", True),
    "05-iso-2022-jp.eml": ("bob@example.net", True),
    "06-shift-jis.eml": ("carol@example.com", True),
    "07-attachments.eml": ("carol@example.com", True),
    "08-broken-no-close-boundary.eml": ("bob@example.net", True),
    "09-broken-bad-base64.eml": ("carol@example.com", True),
    "10-broken-8bit-no-charset.eml": ("ada@example.org", True),
    "11-huge-headers.eml": ("bob@example.net", True),
    "12-out-of-office.eml": ("ada@example.org", False),
    "13-auto-submitted.eml": ("noreply@moodle.example.edu", False),
    "14-bulk-newsletter.eml": ("news@news.example.edu", False),
    "15-dsn-postfix.eml": ("", False),
    "16-bounce-exim-text.eml": ("", False),
    "17-bounce-gmail-text.eml": ("", False),
}


def copy_of(prepared: Prepared, **overrides) -> bytes:
    arguments = dict(
        author="Ada", group_name="Study group", reply_address="group-r3c1p@relay.example",
        message_id="<copy.1@relay.example>", in_reply_to=["<p.1@relay.example>"],
        references=["<p.0@relay.example>", "<p.1@relay.example>"],
        list_id="g7.relay.example", unsubscribe_url="https://course.example.org/u/Tk3",
        unsubscribe_mailto="unsubscribe+Tk3@relay.example", loop_value=LOOP)
    arguments.update(overrides)
    return build_copy(prepared, **arguments)


def relay(raw: bytes, members=MEMBERS, **overrides) -> bytes:
    return copy_of(prepare(parse_message(raw), scrub_map(members)), **overrides)


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def content(part) -> str:
    return part.get_content().replace("\r\n", "\n")


def leaves(message):
    return [p for p in message.walk() if not p.is_multipart()]


def decoded_texts(message) -> list[str]:
    """Every header value and every part's content, decoded."""
    texts = []
    for part in message.walk():
        texts += [str(v) for v in part.values()]
        if not part.is_multipart():
            data = part.get_payload(decode=True) or b""
            charset = part.get_content_charset() or "utf-8"
            texts.append(data.decode(charset, "replace"))
    return texts


def attachments(message) -> list[tuple[str, bytes]]:
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in leaves(message)
            if p.get_content_maintype() not in ("text", "message", "multipart")]


class WellFormedMixin:
    def assertWellFormed(self, data: bytes):
        self.assertTrue(data.isascii(), "the copy is not 7-bit")
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""), "bare LF")
        self.assertNotIn(b"\r", data.replace(b"\r\n", b""), "bare CR")
        longest = max(len(line) for line in data.split(b"\r\n"))
        self.assertLessEqual(longest, 998)

    def assertNoMember(self, data: bytes, addresses=ADDRESSES):
        lowered = data.lower()
        for address in addresses:
            self.assertNotIn(address.encode(), lowered)
            for text in decoded_texts(parse(data)):
                self.assertNotIn(address, text.lower())


class CorpusTests(WellFormedMixin, unittest.TestCase):
    def test_every_file_is_listed(self):
        files = sorted(p.name for p in CORPUS.glob("*.eml"))
        self.assertEqual(files, sorted(EXPECTED))
        self.assertGreaterEqual(len(files), 12)

    def test_corpus(self):
        for name, (mail_from, relayed) in EXPECTED.items():
            raw = (CORPUS / name).read_bytes()
            message = parse_message(raw)
            reason = not_relayable(message, mail_from, LOOP)
            if not relayed:
                self.assertIsInstance(reason, str, name)
                self.assertTrue(reason.strip(), name)
                continue
            self.assertIsNone(reason, f"{name}: {reason}")
            data = copy_of(prepare(message, scrub_map(MEMBERS)))
            copy = parse(data)
            self.assertEqual(copy["Message-ID"], "<copy.1@relay.example>", name)
            self.assertEqual(copy[LOOP_HEADER], LOOP, name)
            self.assertWellFormed(data)
            self.assertNoMember(data)
            self.assertEqual(attachments(copy), attachments(message), name)
            # and our own copy coming back is refused
            self.assertTrue(not_relayable(copy, "x@example.org", LOOP), name)

    def test_attachments_survive(self):
        raw = (CORPUS / "07-attachments.eml").read_bytes()
        original = parse_message(raw)
        copy = parse(relay(raw))
        found = attachments(copy)
        self.assertEqual([kind for kind, _ in found], ["application/pdf", "image/png"])
        self.assertTrue(found[0][1].startswith(b"%PDF-1.4"))
        self.assertEqual(found, attachments(original))
        names = [p.get_filename() for p in leaves(copy) if p.get_filename()]
        self.assertEqual(names, ["lab-report-week3.pdf", "setup.png"])
        # the forwarded message is still one, without the addresses in its header
        forwarded = [p for p in copy.walk() if p.get_content_type() == "message/rfc822"][0]
        inner = forwarded.get_payload()[0]
        self.assertEqual(str(inner["From"]), "Bob")
        self.assertEqual(str(inner["Subject"]), "Lab times (Bob)")
        self.assertIn("Questions to Bob.", content(inner))

    def test_charsets_kept(self):
        for name, charset in [("03-outlook-html-cp1252.eml", "windows-1252"),
                              ("04-iso-8859-1.eml", "iso-8859-1"),
                              ("05-iso-2022-jp.eml", "iso-2022-jp"),
                              ("06-shift-jis.eml", "shift_jis")]:
            copy = parse(relay((CORPUS / name).read_bytes()))
            part = leaves(copy)[0]
            self.assertEqual(part.get_content_charset(), charset, name)
        text = content(leaves(parse(relay((CORPUS / "05-iso-2022-jp.eml").read_bytes())))[0])
        self.assertIn("質問は Ada までどうぞ", text)
        self.assertIn("Bob さんも参加します", text)
        text = content(leaves(parse(relay((CORPUS / "03-outlook-html-cp1252.eml").read_bytes())))[0])
        self.assertIn("Grüße an alle – hier die „Zusammenfassung“", text)
        self.assertIn("<b>Von:</b> Bob<br>", text)

    def test_quote_lines(self):
        text = content(parse(relay((CORPUS / "01-plain-reply.eml").read_bytes())))
        self.assertIn("On Sun, Jun 02, 2024 at 09:14:55PM +0100, Bob wrote:", text)
        self.assertIn("> Carol said Carol had it", text)
        self.assertIn("> Bob Smith | Bob | Bob\n", text)
        self.assertIn("write to me directly at\nAda or Ada and", text)
        copy = parse(relay((CORPUS / "02-gmail-alternative.eml").read_bytes()))
        plain, html = (content(p) for p in leaves(copy))
        self.assertIn("On Mon, Jun 3, 2024 at 10:00 AM Ada wrote:", plain)
        self.assertIn("at 10:00\u202fAM Ada wrote:", html)
        self.assertIn('Write to me at <a href="Ada" target="_blank">Ada</a>.', html)

    def test_huge_headers(self):
        raw = (CORPUS / "11-huge-headers.eml").read_bytes()
        prepared = prepare(parse_message(raw), scrub_map(MEMBERS))
        self.assertEqual(len(prepared.references), 1300)
        self.assertEqual(len(prepared.in_reply_to), 1)
        # nothing of the original header set but its content headers
        self.assertNotIn(b"Received", prepared.entity)
        self.assertNotIn(b"X-Long", prepared.entity)


def plain(body: str, charset: str = "utf-8", cte: str = "8bit", extra: str = "") -> bytes:
    return (f"From: Ada <ada@example.org>\nSubject: test\nMessage-ID: <m.1@example.org>\n{extra}"
            f"MIME-Version: 1.0\nContent-Type: text/plain; charset={charset}\n"
            f"Content-Transfer-Encoding: {cte}\n\n").encode() + body.encode(charset)


class ScrubTests(WellFormedMixin, unittest.TestCase):
    def text(self, body: str, members=MEMBERS, **kw) -> str:
        data = relay(plain(body, **kw), members)
        self.assertWellFormed(data)
        return content(parse(data))

    def html(self, body: str, members=MEMBERS) -> str:
        raw = ("Subject: x\nMIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\n\n"
               + body).encode()
        data = relay(raw, members)
        self.assertNoMember(data)
        return content(parse(data))

    def test_scrub_map(self):
        self.assertEqual(
            scrub_map([("Ada@Example.org ", "Ada L."), ("bob@example.net", ""),
                       ("c@example.com", "c@example.com"), ("d@example.com", " Dee\r\nBcc: x ")]),
            {"ada@example.org": "Ada L.", "bob@example.net": ANONYMOUS,
             "c@example.com": ANONYMOUS, "d@example.com": "Dee Bcc: x"})

    def test_forms(self):
        text = self.text(
            "a ada@example.org b <ADA@example.org> c mailto:ada@example.org?subject=hi d\n"
            "e ada%40example.org f &lt;ada@example.org&gt; g &#64;\n"
            '"Ada Lovelace" <ada@example.org>, Bob Smith <bob@example.net>\n'
            "Ada Lovelace <ada@example.org> schrieb am 3. Juni:\n")
        self.assertEqual(text, "a Ada b Ada c Ada d\ne Ada f Ada g &#64;\nAda, Bob\nAda schrieb am 3. Juni:\n")

    def test_encoded_forms_are_replaced_where_they_are_written(self):
        scrubber = Scrubber(scrub_map([("ada@example.org", "Ada"), ("zoë@bücher.example", "Zoë")]))
        cases = {
            # a link wrapper's nested percent-encoding: the rest of the URL is kept
            "https://w.example/?u=https%253A%252F%252Fx%252F%253Fto%253Dada%2540example.org&k=1":
                "https://w.example/?u=https%253A%252F%252Fx%252F%253Fto%253DAda&k=1",
            "ada&#x40;example&period;org!": "Ada!",
            "ada&#64example.org": "Ada",
            "ada&amp;#64;example.org": "Ada",
            "ada%26%2364%3Bexample.org": "Ada",
            "ada=40example.org": "Ada",
            "ada\\u0040example.org": "Ada",
            "ada\u200b@example.org": "Ada",
            "ada\uff20example.org": "Ada",
            '"ada"@example.org': "Ada",
            "ADA [at] example [dot] org": "Ada",
            "=?utf-8?b?YWRhQGV4YW1wbGUub3Jn?= wrote": "Ada wrote",
            "zoë@xn--bcher-kva.example": "Zoë",
            "mailto:ada%40example.org?cc=x": "Ada",
            "&lt;ada@example.org&gt;": "Ada",
            # not members' addresses, and plain entities, stay as written
            "adam@example.org ada@example.com &amp; &#64; 100%25": "adam@example.org ada@example.com &amp; &#64; 100%25",
        }
        for written, expected in cases.items():
            self.assertEqual(scrubber.text(written, html_=True), expected, written)
        self.assertEqual(scrubber.text("x mailto:ada%40example.org", html_=False), "x Ada")

    def test_display_names(self):
        scrubber = Scrubber(scrub_map([("ada@example.org", "Ada")]))
        for name in ("ada@example.org", "Ada <x@y.example>", "ada&commat;example.org",
                     "ada at example dot org", "x\uff20y.example", "zed%40y.example"):
            self.assertEqual(scrubber.display_name(name), ANONYMOUS_NAME, name)
        self.assertEqual(scrubber.display_name("Ada L. (at home)"), "Ada L. (at home)")

    def test_other_addresses(self):
        self.assertEqual(self.text("ta@example.org bob@example.com ada@example.org.uk\n"),
                         "ta@example.org bob@example.com Ada.uk\n")
        # a member's address inside a longer one is still readable there, so it goes
        self.assertRegex(self.text("jimbob@example.net cid:part1.bob@example.net\n"),
                         r"^jimBob cid:part1\.m1\.[0-9a-f]{8}@removed\.invalid\n$")

    def test_prose_is_not_a_name(self):
        self.assertEqual(self.text("please write to <bob@example.net> soon\n"),
                         "please write to Bob soon\n")

    def test_html(self):
        members = [("ada@example.org", 'Ada & "B" >x'), ("bob@example.net", "Bob")]
        html = self.html('<p>Mail <a href="mailto:ada@example.org">ada@example.org</a> or '
                         '&quot;Bob S&quot; &lt;bob@example.net&gt;</p>', members)
        self.assertEqual(html, '<p>Mail <a href="Ada &amp; &quot;B&quot; &gt;x">Ada &amp; &quot;B&quot; &gt;x</a>'
                               " or Bob</p>\n")

    def test_cid_links_still_match(self):
        raw = ('Subject: x\nMIME-Version: 1.0\nContent-Type: multipart/related; boundary="b"\n\n'
               '--b\nContent-Type: text/html; charset=utf-8\n\n<img src="cid:ada@example.org">\n'
               "--b\nContent-Type: image/gif\nContent-ID: <ada@example.org>\n"
               "Content-Transfer-Encoding: base64\n\nR0lGODlhAQABAAAAACw=\n--b--\n").encode()
        data = relay(raw)
        self.assertNoMember(data)
        html, image = leaves(parse(data))
        cid = re.search(r'src="cid:([^"]+)"', content(html)).group(1)
        self.assertEqual(image["Content-ID"], f"<{cid}>")
        self.assertEqual(image.get_payload(decode=True), b"GIF89a\x01\x00\x01\x00\x00\x00\x00,")

    def test_charset_kept_when_the_name_fits(self):
        data = relay(plain("Grüße, ada@example.org\n", "iso-8859-1"), [("ada@example.org", "Zoë")])
        part = parse(data)
        self.assertEqual(part.get_content_charset(), "iso-8859-1")
        self.assertEqual(content(part), "Grüße, Zoë\n")

    def test_charset_changes_when_the_name_does_not_fit(self):
        data = relay(plain("Grüße, ada@example.org\n", "iso-8859-1"), [("ada@example.org", "Γιάννης")])
        part = parse(data)
        self.assertEqual(part.get_content_charset(), "utf-8")
        self.assertEqual(content(part), "Grüße, Γιάννης\n")

    def test_unchanged_parts_byte_for_byte(self):
        body = "Nothing to see here.\r\nNo addresses.\r\n"
        raw = plain(body, "us-ascii", "7bit")
        prepared = prepare(parse_message(raw), scrub_map(MEMBERS))
        self.assertTrue(prepared.entity.endswith(b"\r\n\r\n" + body.encode()))

    def test_long_lines(self):
        text = self.text("x" * 5000 + " ada@example.org\n" + "y" * 3000 + "\n")
        self.assertEqual(text, "x" * 5000 + " Ada\n" + "y" * 3000 + "\n")
        # an untouched ASCII part with a long line is re-encoded too
        self.assertEqual(self.text("z" * 2000 + "\n", cte="7bit"), "z" * 2000 + "\n")

    def test_base64_and_qp_input(self):
        self.assertEqual(self.text("caf\u00e9 ada@example.org\n", cte="base64"), "café Ada\n")

    def test_no_members(self):
        raw = plain("ada@example.org\n", "us-ascii", "7bit")
        self.assertIn(b"ada@example.org", prepare(parse_message(raw), {}).entity)

    def test_subject_and_ids(self):
        raw = (b"Subject: =?utf-8?q?Re=3A_ada=40example=2Eorg_caf=C3=A9?=\r\n"
               b"Date: Tue, 4 Jun 2024 18:02:44 +0200\r\nMessage-ID: junk <a.1@x> <b.2@x>\r\n"
               b"In-Reply-To: Ada's message <p.1@x>\r\nReferences: <p.0@x>\r\n <p.1@x>\r\n\r\nhi\r\n")
        prepared = prepare(parse_message(raw), scrub_map(MEMBERS))
        self.assertEqual(prepared.subject, "Re: Ada café")
        self.assertEqual(prepared.date, "Tue, 4 Jun 2024 18:02:44 +0200")
        self.assertEqual(prepared.original_message_id, "<a.1@x>")
        self.assertEqual(prepared.in_reply_to, ["<p.1@x>"])
        self.assertEqual(prepared.references, ["<p.0@x>", "<p.1@x>"])

    def test_entity_has_only_content_headers(self):
        raw = plain("hi ada@example.org\n", extra="Received: from x\nX-Originating-IP: 192.0.2.1\n"
                    "Content-Language: en\nContent-Disposition: inline\n")
        entity = prepare(parse_message(raw), scrub_map(MEMBERS)).entity
        head = entity.split(b"\r\n\r\n", 1)[0].decode()
        names = [line.split(":")[0].lower() for line in head.split("\r\n") if line[0] not in " \t"]
        self.assertEqual(sorted(names), ["content-disposition", "content-language",
                                         "content-transfer-encoding", "content-type", "mime-version"])


class BrokenTests(WellFormedMixin, unittest.TestCase):
    def relayed(self, raw: bytes) -> bytes:
        data = relay(raw)
        self.assertWellFormed(data)
        self.assertNoMember(data)
        return data

    def test_garbage(self):
        for raw in [b"", b"\x00\xff" * 100, b"Subject: x\n\n" + bytes(range(256)) * 20,
                    b"Content-Type: multipart/mixed\n\nada@example.org\n",
                    b"Content-Type: multipart/mixed; boundary=\"\"\n\n--\nada@example.org\n",
                    b"Content-Type: text/plain; charset=no-such-charset\n\n\xe9 ada@example.org\n",
                    b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
                    b"RnJvbTogYWRhQGV4YW1wbGUub3JnCgpoaSBib2JAZXhhbXBsZS5uZXQK\n",
                    b"Content-Type: application/json\n\n{\"to\": \"ada@example.org\"}\n",
                    b"Subject: " + b"ada@example.org " * 2000 + b"\n\nx\n"]:
            self.relayed(raw)

    def test_file_names(self):
        raw = ('Subject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n'
               "--b\nContent-Type: text/plain; charset=utf-8; name=\"ada@example.org.txt\"\n\n"
               "notes of ada@example.org\n"
               "--b\nContent-Type: application/octet-stream; name=\"bob@example.net.bin\"\n"
               "Content-Disposition: attachment; filename*=utf-8''bob%40example.net%20%C3%A9.bin\n"
               "Content-Transfer-Encoding: base64\n\nAAEC\n--b--\n").encode()
        copy = parse(self.relayed(raw))
        text, binary = leaves(copy)
        self.assertEqual(text.get_param("name"), "Ada.txt")
        self.assertEqual(binary.get_filename(), "Bob é.bin")
        self.assertEqual(binary.get_payload(decode=True), b"\x00\x01\x02")

    def test_found_by_fuzzing(self):
        # each of these once let an address through or raised
        for raw in [
                # an address in a header name, and in a Content-Type's type
                b'Content-Type: multipart/mixed; boundary="b"\n\n--b\nX-ada@example.org: 1\n'
                b"Content-Type: text/ada@example.orgplain\n\nhi\n--b--\n",
                # replacing one address joins its neighbours into another
                b"Content-Type: text/plain\n\nAada@example.orgDA@EXAMPLE.ORG\n",
                # an address among base64 (which decoding skips)
                b"Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n"
                b"JVBERi0x\nada@example.org\nLjQK\n",
                # a charset name get_payload() cannot decode with
                b"Content-Type: text/plain; charset=\"a\x00b\"\n\n\xe9 ada@example.org\n",
                # quoted-printable "=1B" + "ob@example.net" spells bob@example.net
                b"Content-Type: text/plain; charset=utf-8\n\n\x1bob@example.net \xc3\xa9\n"]:
            self.relayed(raw)
        # (base64 that cannot be decoded is passed on as it came, less the address)
        copy = parse(self.relayed(b"Content-Type: application/pdf\nContent-Transfer-Encoding: "
                                  b"base64\n\nJVBERi0x\nada@example.org\nLjQK\n"))
        self.assertEqual(copy.get_payload(decode=True), b"JVBERi0xAdaLjQK")
        copy = parse(self.relayed(b"Content-Type: application/pdf\nContent-Transfer-Encoding: "
                                  b"base64\n\nJVBERi0x\nLjQK\nada@example.orgxx=\n"))
        self.assertTrue(copy.get_payload(decode=True).startswith(b"%PDF-1.4\n"))

    def test_missing_closing_boundary(self):
        data = self.relayed((CORPUS / "08-broken-no-close-boundary.eml").read_bytes())
        copy = parse(data)
        self.assertEqual([p.get_content_type() for p in leaves(copy)], ["text/plain", "text/html"])
        self.assertFalse(copy.defects)

    def test_undeclared_8bit(self):
        copy = parse(self.relayed((CORPUS / "10-broken-8bit-no-charset.eml").read_bytes()))
        self.assertEqual(copy.get_content_charset(), "utf-8")
        self.assertIn("Café tomorrow at 10? ça va. RÃ©ponds à Ada", content(copy))
        self.assertEqual(str(copy["Subject"]), "café tomorrow?")

    def test_bad_base64(self):
        copy = parse(self.relayed((CORPUS / "09-broken-bad-base64.eml").read_bytes()))
        texts = [content(p) for p in leaves(copy)]
        self.assertTrue(texts[0].startswith("Mail me at Carol or Bob"))
        self.assertEqual(texts[1], "%%%% not base64 at all Ada %%%%\n")


class BuildCopyTests(unittest.TestCase):
    prepared = prepare(parse_message(plain("hello\n")), {})

    def test_headers(self):
        data = copy_of(self.prepared)
        head = data.split(b"\r\n\r\n", 1)[0].decode()
        self.assertEqual(head.split("\r\n")[:4], [
            'From: Ada via Study group <group-r3c1p@relay.example>',
            'Reply-To: Ada via Study group <group-r3c1p@relay.example>',
            'To: Study group <group-r3c1p@relay.example>',
            "Subject: test"])
        copy = parse(data)
        self.assertIsNotNone(copy["Date"].datetime)  # no Date in the original: now
        self.assertEqual(copy["In-Reply-To"], "<p.1@relay.example>")
        self.assertEqual(copy["References"], "<p.0@relay.example> <p.1@relay.example>")
        self.assertEqual(copy["List-Id"], "Study group <g7.relay.example>")
        self.assertEqual(copy["List-Post"], "<mailto:group-r3c1p@relay.example>")
        self.assertEqual(copy["List-Unsubscribe"],
                         "<https://course.example.org/u/Tk3>, <mailto:unsubscribe+Tk3@relay.example>")
        self.assertEqual(copy["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click")
        self.assertEqual(copy["Precedence"], "list")
        self.assertEqual(content(copy), "hello\n")

    def test_optional_headers(self):
        copy = parse(copy_of(self.prepared, in_reply_to=[], references=[], unsubscribe_url=None,
                             unsubscribe_mailto=None))
        for name in ("In-Reply-To", "References", "List-Unsubscribe", "List-Unsubscribe-Post"):
            self.assertIsNone(copy[name], name)
        copy = parse(copy_of(self.prepared, unsubscribe_url=None))
        self.assertEqual(copy["List-Unsubscribe"], "<mailto:unsubscribe+Tk3@relay.example>")
        self.assertIsNone(copy["List-Unsubscribe-Post"])

    def test_date(self):
        raw = plain("x\n", extra="Date: Tue, 4 Jun 2024 18:02:44 +0200\n")
        copy = parse(copy_of(prepare(parse_message(raw), {})))
        self.assertEqual(copy["Date"], "Tue, 04 Jun 2024 18:02:44 +0200")
        raw = plain("x\n", extra="Date: yesterday-ish\n")
        copy = parse(copy_of(prepare(parse_message(raw), {})))
        self.assertIsNotNone(copy["Date"].datetime)

    def test_a_posts_date_is_read_once_and_now_is_never_remembered(self):
        import email.utils

        from emaild.inbound import rewrite

        rewrite._written_date.cache_clear()
        prepared = prepare(parse_message(plain("x\n", extra="Date: Tue, 4 Jun 2024 18:02:44 +0200\n")), {})
        dates = {parse(copy_of(prepared))["Date"] for _ in range(5)}  # five copies
        self.assertEqual(dates, {"Tue, 04 Jun 2024 18:02:44 +0200"})
        self.assertEqual(rewrite._written_date.cache_info().misses, 1)
        # an unreadable Date: each copy says now, whenever it is made
        nows = iter(["Mon, 01 Jan 2024 00:00:00 GMT", "Mon, 01 Jan 2024 00:00:07 GMT"])
        self.patch(email.utils, "formatdate", lambda usegmt=False: next(nows))
        bad = prepare(parse_message(plain("x\n", extra="Date: yesterday-ish\n")), {})
        self.assertEqual([parse(copy_of(bad))["Date"].datetime.second for _ in range(2)], [0, 7])

    def test_injection(self):
        evil = "Eve\r\nBcc: victim@example.com\r\n\r\nbody"
        prepared = Prepared(subject=evil, date="x\r\nBcc: v@example.com", original_message_id=None,
                            in_reply_to=[], references=[], entity=self.prepared.entity)
        data = copy_of(prepared, author=evil, group_name=evil + " =?utf-8?q?=0D=0ABcc:_x?=",
                       in_reply_to=["<ok@x>", "<a@x>\r\nBcc: v@example.com"],
                       references=["<b@x> <c@x>", "no brackets"], loop_value=LOOP + "\r\nBcc: x")
        head = data.split(b"\r\n\r\n", 1)[0]
        self.assertNotIn(b"\r\nBcc", head)
        self.assertNotIn(b"\n\n", data.replace(b"\r\n\r\n", b"", 1))
        copy = parse(data)
        self.assertIsNone(copy["Bcc"])
        self.assertEqual(str(copy["Subject"]), "Eve Bcc: victim@example.com body")
        self.assertEqual(copy["From"].addresses[0].addr_spec, "group-r3c1p@relay.example")
        self.assertEqual(copy["In-Reply-To"], "<ok@x>")
        self.assertIsNone(copy["References"])
        self.assertTrue(data.isascii())

    def test_non_ascii(self):
        prepared = Prepared(subject="Привет, " + "очень " * 300, date=None, original_message_id=None,
                            in_reply_to=[], references=[], entity=self.prepared.entity)
        data = copy_of(prepared, author="Zoë \"Z\" O'Neil, Jr.", group_name="Gruppe ä")
        self.assertTrue(data.isascii())
        self.assertLessEqual(max(len(line) for line in data.split(b"\r\n")), 998)
        copy = parse(data)
        self.assertEqual(copy["From"].addresses[0].display_name, "Zoë \"Z\" O'Neil, Jr. via Gruppe ä")
        self.assertEqual(copy["From"].addresses[0].addr_spec, "group-r3c1p@relay.example")
        self.assertEqual(str(copy["Subject"]), ("Привет, " + "очень " * 300).strip())
        self.assertEqual(copy["To"].addresses[0].display_name, "Gruppe ä")

    def test_long_ascii_subject(self):
        prepared = Prepared(subject="x" * 3000, date=None, original_message_id=None,
                            in_reply_to=[], references=[], entity=self.prepared.entity)
        data = copy_of(prepared)
        self.assertLessEqual(max(len(line) for line in data.split(b"\r\n")), 998)
        self.assertEqual(str(parse(data)["Subject"]), "x" * 3000)

    def test_bad_arguments(self):
        for bad in [dict(reply_address="a@b\r\nBcc: x@y"), dict(message_id="no-brackets"),
                    dict(list_id="a b"), dict(unsubscribe_url="https://x/\r\nBcc: y")]:
            self.assertRaises(ValueError, copy_of, self.prepared, **bad)
