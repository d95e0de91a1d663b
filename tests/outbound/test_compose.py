"""
Rendering messages (no database): MIME structure, headers that user data
cannot break, line endings, link() placeholders, List-Unsubscribe; and the
[kinds.<name>] configuration.
"""

from __future__ import annotations

import email
import email.policy
import quopri
import re
from pathlib import Path

import jinja2
from twisted.trial import unittest

from emaild.config import KIND_SCHEMA, ConfigError, load_config
from emaild.links.service import Links
from emaild.links.store import LinkRow
from emaild.outbound.compose import ComposeError
from emaild.outbound.kinds import KindError, Scope, get_kind, optout_reason, parse_key, parse_target
from emaild.outbound.outbox import make_composer
from tests.support import make_config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
NOW = 1_900_000_000.0
SITE = "https://course.example.org"


def parse(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


class ComposeTestCase(unittest.TestCase):
    templates: dict[str, str | bytes] = {}

    def setUp(self):
        self.tmp = Path(self.mktemp()).absolute()
        (self.tmp / "ops" / "email").mkdir(parents=True)
        for name, text in self.templates.items():
            path = self.tmp / "ops" / "email" / name
            path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        self.cfg = make_config(self.tmp, "", templates={"dir": str(self.tmp / "ops")},
                               http={"public_url": SITE}, smtp={"relay_domain": "mail.course.test"})
        self.links = Links(self.cfg, store=None)
        tokens = iter(f"{i:020x}" for i in range(1, 10**6))
        self.composer = make_composer(self.cfg, links=self.links, clock=lambda: NOW,
                                      new_token=lambda: next(tokens))
        self.next_link_id = 100

    def mint(self, draft) -> list[LinkRow]:
        """
        What Links.mint_many would return, without a database.
        """
        rows = []
        for request in draft.link_requests():
            self.next_link_id += 1
            rows.append(LinkRow(self.next_link_id, request.person_id, request.purpose,
                                request.target, 1234567, 7654321, NOW + request.ttl))
        return rows

    def person_mail(self, template, context=None, person_id=12, kind="announcement",
                    course_id=3, address="ann@example.org", display_name="Ann"):
        unsubscribable = get_kind(self.cfg, kind).unsubscribable
        draft = self.composer.draft(template, address, context or {}, person_id=person_id,
                                    display_name=display_name, kind=kind, course_id=course_id,
                                    unsubscribable=unsubscribable)
        rows = self.mint(draft)
        return draft, rows, self.composer.finish(draft, rows)


class StructureTests(ComposeTestCase):
    templates = {
        "note.subject.txt": "{{ subject }}",
        "note.txt": "Hello {{ name }},\n\n{{ body }}\n",
        "note.html": "<p>Hello {{ name }},</p>\n<p>{{ body }}</p>\n",
        "textonly.subject.txt": "Just text",
        "textonly.txt": "{{ body }}\n",
    }

    def test_multipart_alternative_parses_with_the_email_package(self):
        rendered = self.composer.render("note", "ann@example.org",
                                        {"name": "Änne", "subject": "Grüße", "body": "Café <b>"})
        message = parse(rendered.data)
        self.assertEqual(message.get_content_type(), "multipart/alternative")
        plain, html = message.iter_parts()
        self.assertEqual(plain.get_content_type(), "text/plain")
        self.assertEqual(html.get_content_type(), "text/html")
        self.assertEqual(plain.get_content_charset(), "utf-8")
        self.assertIn("Hello Änne,\n\nCafé <b>", plain.get_content())
        self.assertIn("Café &lt;b&gt;", html.get_content())  # HTML is autoescaped
        self.assertEqual(message["Subject"], "Grüße")
        self.assertEqual(message["To"].addresses[0].display_name, "Änne")
        self.assertEqual(message["To"].addresses[0].addr_spec, "ann@example.org")
        self.assertEqual(message["Message-ID"], rendered.message_id)
        self.assertTrue(rendered.envelope_from.startswith("bounces+"))
        self.assertTrue(rendered.envelope_from.endswith("@mail.course.test"))
        self.assertIsNotNone(message["Date"].datetime)
        self.assertEqual(message["Auto-Submitted"], "auto-generated")
        self.assertNotIn(b"\r", rendered.data)  # stored with LF; transports make CRLF

    def test_text_only_is_a_single_part(self):
        message = parse(self.composer.render("textonly", "a@example.org", {"body": "x"}).data)
        self.assertEqual(message.get_content_type(), "text/plain")
        self.assertFalse(message.is_multipart())

    def test_user_data_cannot_add_headers(self):
        attacks = ["Eve\r\nBcc: victim@example.org", "Eve\nX-Injected: yes",
                   "=?utf-8?q?X=0D=0ABcc:_v@example.org?=", "Eve\r\n\r\nbody"]
        for attack in attacks:
            rendered = self.composer.render("note", "eve@example.org",
                                            {"name": attack, "subject": attack, "body": "b"})
            message = parse(rendered.data)
            self.assertNotIn("Bcc", message, attack)
            self.assertNotIn("X-Injected", message, attack)
            self.assertEqual(message["To"].addresses[0].addr_spec, "eve@example.org")
            # what looks like an encoded word decodes to itself, not to a CRLF
            self.assertNotIn("\n", message["To"].addresses[0].display_name, attack)
            self.assertNotIn("\n", message["Subject"], attack)
            self.assertEqual(len(message["To"].addresses), 1)
            head = rendered.data.split(b"\n\n", 1)[0]
            for line in head.split(b"\n"):
                self.assertTrue(line[:1] in (b" ", b"\t") or re.match(rb"^[A-Za-z-]+: ", line),
                                (attack, line))

    def test_text_that_looks_encoded_stays_literal(self):
        trick = "=?utf-8?q?X=0D=0ABcc:_v@example.org?="
        message = parse(self.composer.render(
            "note", "eve@example.org", {"name": trick, "subject": trick, "body": "b"}).data)
        self.assertEqual(message["To"].addresses[0].display_name, trick)
        self.assertEqual(message["Subject"], trick)

    def test_person_display_name_cannot_add_headers(self):
        _, _, rendered = self.person_mail(
            "note", {"subject": "s", "body": "b"},
            display_name="Mallory\r\nBcc: victim@example.org\r\nList-Unsubscribe: <https://evil>")
        message = parse(rendered.data)
        self.assertNotIn("Bcc", message)
        self.assertEqual(len(message.get_all("List-Unsubscribe")), 1)
        self.assertTrue(message["List-Unsubscribe"].startswith(f"<{SITE}/unsubscribe/"))

    def test_bad_addresses_are_refused(self):
        for bad in ["not an address", "a@example.org\nBcc: b@example.org", "<a@example.org>", ""]:
            with self.assertRaises(ComposeError):
                self.composer.render("note", bad, {"name": "n", "subject": "s", "body": "b"})


class LineEndingTests(ComposeTestCase):
    body = "Dear {{ name }},\n\n.a line with a dot\n{{ body }}\nThe end.\n"
    html = "<p>{{ name }}</p>\n<p>{{ body }}</p>\n"
    templates = {
        "lf.subject.txt": "Line\nendings {{ name }}\n",
        "lf.txt": body,
        "lf.html": html,
        "crlf.subject.txt": "Line\r\nendings {{ name }}\r\n".encode(),
        "crlf.txt": body.replace("\n", "\r\n").encode(),
        "crlf.html": html.replace("\n", "\r\n").encode(),
    }

    def test_lf_and_crlf_templates_give_identical_bytes(self):
        context = {"name": "Zoë", "body": "many words " * 40}
        tokens = []
        for name in ("lf", "crlf"):
            self.composer.new_token = lambda: "0" * 20
            tokens.append(self.composer.render(name, "a@example.org", context).data)
        self.assertEqual(tokens[0], tokens[1])
        self.assertNotIn(b"\r", tokens[0])
        self.assertEqual(parse(tokens[0])["Subject"], "Line endings Zoë")

    def test_crlf_in_context_values_is_normalised(self):
        self.composer.new_token = lambda: "0" * 20
        a = self.composer.render("lf", "a@example.org", {"name": "n", "body": "x\r\ny"}).data
        b = self.composer.render("lf", "a@example.org", {"name": "n", "body": "x\ny"}).data
        self.assertEqual(a, b)


class LinkTests(ComposeTestCase):
    templates = {
        "links.subject.txt": "Your group: {{ link('/groups/3') }}",
        "links.txt": "Go to {{ link('/groups/3') }}\nor {{ link('/home?tab=mail&x=1') }}\n",
        "links.html": "<a href=\"{{ link('/groups/3') }}\">group</a>"
                      " <a href=\"{{ link('/home?tab=mail&x=1') }}\">home</a>\n",
        "qp.subject.txt": "QP",
        "qp.txt": "Grüße {{ link('/groups/3') }}\n",
        # non-ASCII and a long line: quoted-printable, which folds at 76
        "qp.html": "<p>Grüße — " + "x" * 50 + " <a href=\"{{ link('/groups/3') }}\">"
                   "{{ link('/groups/3') }}</a> " + "y" * 100 + "</p>\n",
        "bad.subject.txt": "s",
        "bad.txt": "{{ link(target) }}\n",
        "plain.subject.txt": "{{ subject }}",
        "plain.txt": "{{ body }}\n{% if unsubscribe_url %}Stop: {{ unsubscribe_url }}{% endif %}\n",
    }

    def test_links_are_substituted_in_text_html_and_subject(self):
        draft, rows, rendered = self.person_mail("links", kind="login", course_id=None)
        # the same target twice is one link
        self.assertEqual([(r.purpose, r.target) for r in draft.requests],
                         [("login", "/groups/3"), ("login", "/home?tab=mail&x=1")])
        group, home = (self.links.url(row) for row in rows)
        self.assertTrue(group.startswith(f"{SITE}/email/"))
        message = parse(rendered.data)
        plain, html = message.iter_parts()
        self.assertEqual(message["Subject"], f"Your group: {group}")
        self.assertEqual(rendered.subject, f"Your group: {group}")
        # (the part's last line break belongs to the MIME boundary)
        self.assertEqual(plain.get_content().rstrip("\n"), f"Go to {group}\nor {home}")
        self.assertIn(f'<a href="{group}">group</a>', html.get_content())
        self.assertIn(f'<a href="{home}">home</a>', html.get_content())
        self.assertNotIn(b"emaildlink", rendered.data)

    def test_quoted_printable_html_decodes_to_the_right_url(self):
        draft, rows, rendered = self.person_mail("qp", kind="login")
        url = self.links.url(rows[0])
        message = parse(rendered.data)
        plain, html = message.iter_parts()
        self.assertEqual(html["Content-Transfer-Encoding"], "quoted-printable")
        raw = html.get_payload(decode=False).encode("ascii")
        self.assertTrue(any(len(line) > 70 for line in raw.split(b"\n")))
        self.assertIn(b"=\n", raw)  # soft line breaks: a URL may be split across lines
        decoded = quopri.decodestring(raw).decode("utf-8")
        self.assertIn(f'<a href="{url}">{url}</a>', decoded)
        self.assertEqual(html.get_content(), decoded)
        self.assertIn(url, plain.get_content())
        self.assertNotIn("emaildlink", decoded)

    def test_bare_address_mail_cannot_call_link(self):
        with self.assertRaises(ComposeError) as caught:
            self.composer.render("links", "a@example.org", {})
        self.assertIn("needs a person", str(caught.exception))
        self.assertIn("bare address", str(caught.exception))

    def test_bad_targets_are_refused_with_the_reason(self):
        for target in ["//evil.example/", "https://evil.example/x", "javascript:alert(1)",
                       "/ok\nLocation: x", 3]:
            with self.assertRaises(ComposeError) as caught:
                self.person_mail("bad", {"target": target})
            self.assertIn("link(", str(caught.exception))

    def test_placeholders_cannot_be_forged_from_the_context(self):
        draft, _, _ = self.person_mail("links", kind="login")
        earlier = draft.placeholders[0]
        # a later render has other placeholders: a context value equal to an
        # earlier one stays literal text
        _, _, rendered = self.person_mail("plain", {"subject": "s", "body": earlier}, kind="login")
        self.assertIn(earlier, parse(rendered.data).get_content())

    def test_list_unsubscribe_on_unsubscribable_mail(self):
        draft, rows, rendered = self.person_mail(
            "plain", {"subject": "News", "body": "Hello"}, kind="announcement", course_id=3)
        self.assertEqual(draft.unsubscribe.purpose, "unsubscribe")
        self.assertEqual(draft.unsubscribe.target, "announcement:3")
        url, token = self.links.url(rows[-1]), self.links.token(rows[-1])
        message = parse(rendered.data)
        self.assertEqual(message["List-Unsubscribe"],
                         f"<{url}>, <mailto:unsubscribe+{token}@mail.course.test>")
        self.assertTrue(url.startswith(f"{SITE}/unsubscribe/"))
        self.assertEqual(message["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click")
        self.assertIn(f"Stop: {url}", message.get_content())  # unsubscribe_url in the template
        self.assertTrue(rendered.unsubscribable)
        self.assertEqual((rendered.person_id, rendered.course_id, rendered.kind),
                         (12, 3, "announcement"))
        # every header line stays within RFC 5322's limit
        head = rendered.data.split(b"\n\n", 1)[0]
        self.assertLessEqual(max(len(line) for line in head.split(b"\n")), 998)

    def test_no_list_unsubscribe_on_transactional_or_bare_mail(self):
        _, rows, rendered = self.person_mail("plain", {"subject": "s", "body": "b"}, kind="login")
        self.assertEqual(rows, [])
        bare = self.composer.render("plain", "a@example.org", {"subject": "s", "body": "b"})
        for data in (rendered.data, bare.data):
            message = parse(data)
            self.assertNotIn("List-Unsubscribe", message)
            self.assertNotIn("List-Unsubscribe-Post", message)
            self.assertEqual(message.get_content(), "b\n\n")
        self.assertFalse(rendered.unsubscribable)

    def test_a_link_changed_by_a_filter_is_refused(self):
        self.composer.env.loader = jinja2.ChoiceLoader(  # a folder before the others
            [jinja2.FileSystemLoader(str(self.tmp / "more")), self.composer.env.loader])
        (self.tmp / "more").mkdir()
        (self.tmp / "more" / "cut.subject.txt").write_text("s")
        (self.tmp / "more" / "cut.txt").write_text("{{ link('/home') | upper }}\n")
        with self.assertRaises(ComposeError) as caught:
            self.person_mail("cut", kind="login")
        self.assertIn("was changed in the template", str(caught.exception))

    def test_finish_needs_every_link(self):
        draft = self.composer.draft("links", "a@example.org", {}, person_id=1)
        with self.assertRaises(ComposeError):
            self.composer.finish(draft, [])


class KindsConfigTests(unittest.TestCase):
    def config(self, text: str = "", environ=None):
        path = None
        if text:
            path = self.mktemp()
            Path(path).write_text(text)
        return load_config(path, environ=environ or {})

    def test_built_in_kinds(self):
        kinds = self.config().kinds
        self.assertFalse(kinds["login"].unsubscribable)
        self.assertEqual(kinds["login"].qos, "transactional")
        for name in ("announcement", "notification", "digest"):
            self.assertTrue(kinds[name].unsubscribable, name)
            self.assertTrue(kinds[name].description, name)

    def test_file_and_environment(self):
        config = self.config('[kinds.digest]\nqos = "notification"\n'
                             '[kinds.reminder]\ndescription = "Due dates"\n',
                             environ={"EMAILD_KINDS_REMINDER_UNSUBSCRIBABLE": "no"})
        self.assertEqual(config.kinds["digest"].qos, "notification")
        self.assertTrue(config.kinds["digest"].unsubscribable)  # built-in kept
        self.assertEqual(config.kinds["reminder"].description, "Due dates")
        self.assertEqual(config.kinds["reminder"].qos, "default")
        self.assertFalse(config.kinds["reminder"].unsubscribable)

    def test_errors_name_the_key(self):
        cases = {
            "[kinds.digest]\nspeed = 1\n": ("kinds.digest.speed", "unknown key"),
            '[kinds.digest]\nqos = "nope"\n': ("kinds.digest.qos", "no QoS class"),
            '[kinds.digest]\nunsubscribable = "maybe"\n': ("kinds.digest.unsubscribable", "true or false"),
            '[kinds."Bad Name"]\nqos = "default"\n': ('kinds.Bad Name', "lower-case"),
            "kinds = 3\n": ("kinds", "tables"),
        }
        for text, (key, words) in cases.items():
            with self.assertRaises(ConfigError) as caught:
                self.config(text)
            self.assertEqual(caught.exception.key, key, text)
            self.assertIn(words, str(caught.exception), text)

    def test_every_kind_key_is_documented(self):
        docs = DOCS.read_text()
        self.assertIn("[kinds.<name>]", docs)
        for key in KIND_SCHEMA:
            self.assertIn(f"| `{key}` |", docs)

    def test_scopes(self):
        self.assertEqual(parse_target("announcement:3"), Scope(3, "announcement"))
        self.assertEqual(parse_target("*:*"), Scope(None, None))
        self.assertEqual(Scope(None, "digest").target, "digest:*")
        self.assertEqual(parse_key("3:digest"), Scope(3, "digest"))
        self.assertIsNone(parse_key("3:digest\n"))
        for bad in ["", "announcement", "a:b", "A:3", "x:0", "x:-1", "x:3\n", None]:
            with self.assertRaises(KindError):
                parse_target(bad)
        self.assertEqual(optout_reason(12, Scope(3, "announcement"), "one-click", "2026-11-28"),
                         "person 12 unsubscribed from announcement mail in course 3 "
                         "(one-click, 2026-11-28)")
        self.assertEqual(optout_reason(12, Scope(None, None), "web", "2026-11-28"),
                         "person 12 unsubscribed from all mail in every course (web, 2026-11-28)")
