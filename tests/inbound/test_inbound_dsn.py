"""
Reading bounces: RFC 3464 reports and free-text ones.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial import unittest

from emaild.inbound.dsn import BounceReport, parse_bounce

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def report(*blocks: str, text: str = "Delivery failed.\n") -> bytes:
    status = "\n".join(blocks)
    return (f"From: MAILER-DAEMON@mx.example\nSubject: Undelivered Mail\nMIME-Version: 1.0\n"
            f"Content-Type: multipart/report; report-type=delivery-status; boundary=\"R\"\n\n"
            f"--R\nContent-Type: text/plain\n\n{text}\n--R\nContent-Type: message/delivery-status\n\n"
            f"Reporting-MTA: dns; mx.example\n\n{status}\n--R--\n").encode()


class StandardTests(unittest.TestCase):
    def test_postfix(self):
        reports = parse_bounce((CORPUS / "15-dsn-postfix.eml").read_bytes())
        self.assertEqual(reports, [
            BounceReport(recipient="bob@example.net", action="failed", status="5.1.1",
                         diagnostic="550 5.1.1 <bob@example.net>: Recipient address rejected: "
                                    "User unknown in virtual mailbox table", hard=True),
            BounceReport(recipient="carol@example.com", action="delayed", status="4.4.1",
                         diagnostic="connect to mx.example.com[192.0.2.9]:25: Connection timed out",
                         hard=False)])

    def test_not_hard(self):
        for action, status in [("delayed", "4.4.7"), ("delivered", "2.0.0"), ("relayed", "2.0.0"),
                               ("expanded", "2.0.0"), ("failed", "4.4.7")]:
            [r] = parse_bounce(report(f"Final-Recipient: rfc822; a@b.example\nAction: {action}\n"
                                      f"Status: {status}\n"))
            self.assertEqual((r.action, r.status, r.hard), (action, status, False))

    def test_status_from_the_diagnostic(self):
        [r] = parse_bounce(report("Final-Recipient: rfc822;<a@b.example>\nAction: Failed\n"
                                  "Diagnostic-Code: smtp; 550 Mailbox does not exist\n"))
        self.assertEqual(r, BounceReport("a@b.example", "failed", "5.0.0", "550 Mailbox does not exist", True))
        [r] = parse_bounce(report("Final-Recipient: rfc822; a@b.example\nAction: failed\n"
                                  "Status: 5.7.1 (delivery not authorized)\n"))
        self.assertEqual((r.status, r.hard, r.diagnostic), ("5.7.1", True, ""))

    def test_several_recipients_and_no_recipient(self):
        reports = parse_bounce(report(
            "Final-Recipient: rfc822; a@b.example\nAction: failed\nStatus: 5.1.1\n",
            "Original-Recipient: rfc822; c@d.example\nFinal-Recipient: rfc822; x@internal\n"
            "Action: failed\nStatus: 5.2.2\n",
            "Action: failed\nStatus: 5.0.0\n"))
        self.assertEqual([(r.recipient, r.status) for r in reports],
                         [("a@b.example", "5.1.1"), ("c@d.example", "5.2.2"), (None, "5.0.0")])


class FallbackTests(unittest.TestCase):
    def test_exim(self):
        self.assertEqual(parse_bounce((CORPUS / "16-bounce-exim-text.eml").read_bytes()), [
            BounceReport("carol@example.com", "failed", "5.2.1",
                         "550 5.2.1 The email account that you tried to reach is disabled.", True)])

    def test_gmail(self):
        [r] = parse_bounce((CORPUS / "17-bounce-gmail-text.eml").read_bytes())
        self.assertEqual((r.recipient, r.action, r.status, r.hard),
                         ("ada.old@example.org", "failed", "5.1.1", True))
        self.assertTrue(r.diagnostic.startswith("550 5.1.1 The email account"))

    def test_postfix_text_only(self):
        raw = (b"From: MAILER-DAEMON\nSubject: Undelivered Mail Returned to Sender\n\n"
               b"I'm sorry to have to inform you that your message could not\nbe delivered.\n\n"
               b"<bob@example.net>: host mx.example.net[203.0.113.5] said: 550 5.1.1 User unknown\n")
        self.assertEqual([(r.recipient, r.status, r.hard) for r in parse_bounce(raw)],
                         [("bob@example.net", "5.1.1", True)])

    def test_temporary(self):
        raw = (b"Subject: Delivery delayed\n\nYour message could not be delivered yet.\n"
               b"451 4.2.0 Mailbox busy, will retry <a@b.example>\n")
        [r] = parse_bounce(raw)
        self.assertEqual((r.action, r.status, r.hard), ("delayed", "4.2.0", False))

    def test_permanent_without_a_code(self):
        raw = (b"Subject: Mail delivery failed\n\nThis is a permanent error. The following address(es) "
               b"failed:\n\n  gone@example.org\n    all hosts have been failing for a long time\n")
        self.assertEqual(parse_bounce(raw), [BounceReport("gone@example.org", "failed", "5.0.0",
                                                          "permanent", True)])

    def test_nothing_recognisable(self):
        for raw in [b"", b"\xff" * 100, b"Subject: hi\n\nSee you at 5.1.1 tomorrow, room 550.\n",
                    (CORPUS / "01-plain-reply.eml").read_bytes(),
                    (CORPUS / "12-out-of-office.eml").read_bytes(),
                    b"Content-Type: multipart/report; boundary=x\n\n--x\nContent-Type: "
                    b"message/delivery-status\n\n\xff\xfe garbage\n"]:
            self.assertEqual(parse_bounce(raw), [], raw[:40])
