"""
The shared mail-format helpers, and that they stay a leaf below outbound,
inbound and people.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from email import message_from_string, policy
from pathlib import Path

from twisted.trial import unittest

import emaild.mailformat
from emaild.mailformat.addresses import AddressError, check_address
from emaild.mailformat.headers import (
    HeaderError,
    address_header,
    check_header_uri,
    encoded_header,
    header_text,
)
from emaild.mailformat.parts import encode_text_part, normalise_newlines, text_part_headers

PACKAGE = Path(emaild.mailformat.__file__).parent


class LeafTests(unittest.TestCase):
    def test_imports_nothing_else_from_emaild(self):
        for path in PACKAGE.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                         else [a.name for a in node.names] if isinstance(node, ast.Import)
                         else [])
                for name in names:
                    if name == "emaild" or name.startswith("emaild."):
                        self.assertTrue(name.startswith("emaild.mailformat"),
                                        f"{path.name} imports {name}")

    def test_importing_it_alone_loads_no_other_part(self):
        code = ("import sys, emaild.mailformat.addresses, emaild.mailformat.headers, "
                "emaild.mailformat.parts; print(sorted(m for m in sys.modules "
                "if m.startswith('emaild')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout
        loaded = ast.literal_eval(out)
        self.assertEqual([m for m in loaded if not m.startswith("emaild.mailformat")],
                         ["emaild"])


class AddressTests(unittest.TestCase):
    def test_accepts_and_strips(self):
        self.assertEqual(check_address("  ada+x@mail.example.org\n"), "ada+x@mail.example.org")

    def test_refuses_with_a_reason(self):
        for bad, fragment in [("", "empty"), ("ada", "not a valid"), ("a..b@example.org", "not a valid"),
                              ("ada@example.org\r\nBcc: x@evil.example", "not a valid"),
                              ("adä@example.org", "not a valid"), (None, "must be a string")]:
            with self.assertRaises(AddressError) as e:
                check_address(bad)
            self.assertIn(fragment, str(e.exception))
            self.assertIsInstance(e.exception, ValueError)


class HeaderTests(unittest.TestCase):
    def parse(self, line: str):
        return message_from_string(line + "\n\n", policy=policy.default)

    def test_no_value_can_add_a_header_line(self):
        for name, line in [
            ("Subject", encoded_header("Subject", "Hi\r\nBcc: evil@example.org")),
            ("Subject", encoded_header("Subject", "Grüße\nBcc: evil@example.org " * 5)),
            ("From", address_header("From", "Ada\r\nBcc: evil@example.org", "a@example.org")),
        ]:
            message = self.parse(line)
            self.assertEqual(list(message.keys()), [name], line)
            self.assertIsNone(message["Bcc"])

    def test_text_that_looks_encoded_comes_back_literally(self):
        for value in ("=?utf-8?q?evil?=", "Café =?utf-8?b?eA==?="):
            self.assertEqual(str(self.parse(encoded_header("Subject", value))["Subject"]), value)
            display = self.parse(address_header("From", value, "a@example.org"))["From"]
            self.assertEqual(display.addresses[0].display_name, value)

    def test_header_text_is_one_line(self):
        self.assertEqual(header_text(" a\r\n\tb  c "), "a b c")

    def test_header_uri(self):
        self.assertEqual(check_header_uri("https://x.example/u?t=1"), "https://x.example/u?t=1")
        for bad in ("https://x.example/>, <mailto:evil@example.org", "a b", "x" * 901, "a\r\nB: c"):
            with self.assertRaises(HeaderError):
                check_header_uri(bad)


class PartTests(unittest.TestCase):
    def test_ascii_is_7bit_and_the_rest_quoted_printable(self):
        self.assertEqual(encode_text_part("hello\r\nworld"), ("7bit", b"hello\nworld\n"))
        self.assertEqual(encode_text_part("x" * 999)[0], "quoted-printable")
        cte, body = encode_text_part("Grüße\n")
        self.assertEqual((cte, body), ("quoted-printable", b"Gr=C3=BC=C3=9Fe\n"))

    def test_part_headers(self):
        self.assertEqual(text_part_headers("html", "7bit"),
                         b'Content-Type: text/html; charset="utf-8"\n'
                         b"Content-Transfer-Encoding: 7bit\n\n")

    def test_newlines(self):
        self.assertEqual(normalise_newlines("a\rb\r\nc"), "a\nb\nc\n")
