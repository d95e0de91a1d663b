"""
Telling human posts from auto-replies, bounces, loops and other lists' mail.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial import unittest

from emaild.inbound.classify import LOOP_HEADER, header_value, not_relayable, parse_message

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
LOOP = "emaild-test"


def message(headers: str = "", body: str = "Hi all\n"):
    return parse_message((f"From: Ada <ada@example.org>\nSubject: hello\n{headers}\n{body}").encode())


class ParseTests(unittest.TestCase):
    def test_never_raises(self):
        for raw in [b"", b"\x00" * 10, b"\xff\xfe" * 5000, b":\n:\n\n", b"Subject: " + b"x" * 200_000,
                    b"Content-Type: multipart/mixed; boundary=\n\n--\n--\n",
                    "Subject: héllo\n\n".encode("latin-1"), "no header at all"]:
            parse_message(raw)

    def test_8bit_header(self):
        self.assertEqual(header_value(parse_message("Subject: Grüße\n\n".encode("utf-8")), "Subject"),
                         "Grüße")
        self.assertEqual(header_value(parse_message("Subject: Grüße\n\n".encode("cp1252")), "Subject"),
                         "Grüße")
        self.assertEqual(header_value(parse_message(b"Subject: =?utf-8?q?caf=C3=A9?=\n\n"), "Subject"),
                         "café")


class RelayableTests(unittest.TestCase):
    def refused(self, headers: str = "", mail_from: str = "ada@example.org", **kw) -> str:
        reason = not_relayable(message(headers, **kw), mail_from, LOOP)
        self.assertIsInstance(reason, str, headers)
        self.assertTrue(reason)
        return reason

    def relayed(self, headers: str = "", mail_from: str = "ada@example.org"):
        self.assertIsNone(not_relayable(message(headers), mail_from, LOOP), headers)

    def test_human(self):
        self.relayed()
        self.relayed("In-Reply-To: <a@b>\nX-Mailer: Thunderbird\n")

    def test_null_sender(self):
        self.assertIn("null sender", self.refused(mail_from=""))
        self.refused(mail_from="<>")
        self.refused(mail_from="MAILER-DAEMON@mx.example.org")

    def test_loop(self):
        self.assertIn("loop", self.refused(f"{LOOP_HEADER}: {LOOP}\n"))
        # another emaild's copy is a post like any other
        self.relayed(f"{LOOP_HEADER}: someone-else\n")

    def test_auto_submitted(self):
        self.refused("Auto-Submitted: auto-replied\n")
        self.refused("Auto-Submitted: auto-generated; owner-email=x@y\n")
        self.refused("Auto-Submitted: auto-replied (vacation)\n")
        self.relayed("Auto-Submitted: no\n")
        self.relayed("Auto-Submitted: No (human)\n")

    def test_precedence(self):
        for value in ("bulk", "junk", "list", "auto_reply", "BULK"):
            self.refused(f"Precedence: {value}\n")
        self.relayed("Precedence: first-class\n")

    def test_autoreply_headers(self):
        self.refused("X-Autoreply: yes\n")
        self.refused("X-Autorespond: vacation\n")
        self.relayed("X-Autoreply: no\n")
        self.refused("X-Auto-Response-Suppress: All\n")
        self.refused("X-Auto-Response-Suppress: DR, OOF, AutoReply\n")
        # Outlook puts this on ordinary mail
        self.relayed("X-Auto-Response-Suppress: DR, RN, NRN\n")

    def test_subjects(self):
        for subject in ("Out of Office: Re: meeting", "Automatic reply: PS 3", "Auto: hello",
                        "Autosvar: hej", "Abwesenheitsnotiz: Treffen", "AutoReply: x",
                        "Réponse automatique : x", "OOO until Monday"):
            reason = not_relayable(parse_message(f"Subject: {subject}\n\nx\n".encode()), "a@b.org", LOOP)
            self.assertTrue(reason, subject)
        for subject in ("Re: Out of office?", "Automatic differentiation question", "Autumn term",
                        "Absence on Thursday", "Auto-encoder results"):
            self.assertIsNone(
                not_relayable(parse_message(f"Subject: {subject}\n\nx\n".encode()), "a@b.org", LOOP), subject)

    def test_other_lists(self):
        self.assertEqual(self.refused("List-Id: Physics <physics.lists.example.edu>\n"),
                         "mail from another mailing list")

    def test_reports(self):
        self.refused("MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status;"
                     " boundary=x\n", body="--x\n\n--x--\n")
        self.refused("MIME-Version: 1.0\nContent-Type: multipart/report; "
                     "report-type=disposition-notification; boundary=x\n", body="--x--\n")

    def test_corpus(self):
        expected = {"12-out-of-office.eml": "ada@example.org",
                    "13-auto-submitted.eml": "noreply@moodle.example.edu",
                    "14-bulk-newsletter.eml": "news@news.example.edu",
                    "15-dsn-postfix.eml": "bounces@mx.example.org",
                    "16-bounce-exim-text.eml": "", "17-bounce-gmail-text.eml": ""}
        for name, mail_from in expected.items():
            raw = (CORPUS / name).read_bytes()
            self.assertTrue(not_relayable(parse_message(raw), mail_from, LOOP), name)
        # the out-of-office reply is recognised by its subject alone too
        raw = (CORPUS / "12-out-of-office.eml").read_bytes()
        stripped = b"".join(line for line in raw.splitlines(True)
                            if not line.startswith((b"Auto-Submitted", b"X-Auto-Response")))
        self.assertIn("subject", not_relayable(parse_message(stripped), "ada@example.org", LOOP))


class AbsentHeadersTests(unittest.TestCase):
    def test_only_headers_the_message_has_are_read(self):
        from emaild.inbound import classify

        asked = []
        real = classify.header_values

        def counting(message, name):
            asked.append(name.lower())
            return real(message, name)

        self.patch(classify, "header_values", counting)
        self.assertIsNone(not_relayable(message("PRECEDENCE: first-class\n"), "a@b", LOOP))
        self.assertEqual(sorted(asked), ["precedence", "subject"])
        # in any case, as before
        self.assertIn("Precedence", not_relayable(message("PRECEDENCE: bulk\n"), "a@b", LOOP))
        self.assertIn("loop", not_relayable(message(f"{LOOP_HEADER.upper()}: {LOOP}\n"),
                                            "a@b", LOOP))
        self.assertIn("subject", not_relayable(
            parse_message(b"SUBJECT: Out of office\n\nx\n"), "a@b", LOOP))
