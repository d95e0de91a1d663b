"""
The pieces that make rendering a message fast, each checked against what
it replaces (no database): L{Renderer} against C{Template.render}, the
cached Date header, the buffered random tokens, the fast paths of the
address header and of text parts.
"""

from __future__ import annotations

import email.utils
import os
import random

import jinja2
from twisted.trial import unittest

from emaild.mailformat.headers import address_header, header_text
from emaild.mailformat.parts import encode_text_part
from emaild.outbound.compose import Composer, RandomHex
from emaild.templating import Renderer

TEMPLATES = {
    "plain.txt": "Hello {{ name }}, {{ site_url }} {{ recipient | upper }}\n",
    "set.txt": "{% set greeting = 'Hi ' ~ name %}{{ greeting }}{% for i in range(3) %}{{ i }}{% endfor %}",
    "macro.txt": "{% macro b(x) %}[{{ x }}]{% endmacro %}{{ b(name) }}{{ b(course | default('c')) }}",
    "base.html": "<p>{% block body %}base {{ name }}{% endblock %}</p>",
    "child.html": "{% extends 'base.html' %}{% block body %}child {{ name }} {{ super() }}{% endblock %}",
    "escape.html": "<b>{{ name }}</b>{% autoescape false %}{{ name }}{% endautoescape %}{{ raw | safe }}",
    "include.txt": "before {% include 'plain.txt' %}after",
    "import.txt": "{% import 'macro.txt' as m with context %}{{ m.b('z') }}",
    "globals.txt": "{{ site_url }} {{ shadowed }} {{ namespace is defined }}",
    "missing.txt": "{{ nowhere }}",
    "broken.txt": "{{ 1 // zero }}",
}


def environment():
    return jinja2.Environment(
        loader=jinja2.DictLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, auto_reload=False)


class RendererTests(unittest.TestCase):
    """
    A Renderer gives exactly what Template.render gives with the same
    values on top of the same globals, and raises what it raises.
    """

    extra = {"site_url": "https://course.example.org", "shadowed": "global"}

    def render_both(self, name, values):
        env = environment()
        template = env.get_template(name)
        return (template.render({**self.extra, **values}),
                Renderer(template, self.extra).render(values))

    def test_same_output_as_template_render(self):
        values = {"name": "Ada <&> \"L\"", "recipient": "ada@example.org", "raw": "<i>x</i>",
                  "zero": 1, "shadowed": "mine"}
        for name in TEMPLATES:
            if name in ("missing.txt",):
                continue
            expected, got = self.render_both(name, values)
            self.assertEqual(got, expected, name)
        self.assertIn("&lt;&amp;&gt;", self.render_both("escape.html", values)[1])
        self.assertEqual(self.render_both("globals.txt", values)[1],
                         "https://course.example.org mine True")

    def test_renders_many_times_independently(self):
        env = environment()
        renderer = Renderer(env.get_template("set.txt"))
        self.assertEqual([renderer.render({"name": n}) for n in ("a", "b")],
                         ["Hi a012", "Hi b012"])

    def test_same_errors_as_template_render(self):
        env = environment()
        for name, error in (("missing.txt", jinja2.UndefinedError),
                            ("broken.txt", ZeroDivisionError)):
            template = env.get_template(name)
            with self.assertRaises(error) as expected:
                template.render({"zero": 0})
            with self.assertRaises(error) as got:
                Renderer(template).render({"zero": 0})
            self.assertEqual(str(got.exception), str(expected.exception))


class DateHeaderTests(unittest.TestCase):
    def test_date_is_formatdate_of_the_clock_each_second(self):
        now = [1_900_000_000.25]
        composer = Composer(environment(), "mail.example.org", "course@example.org",
                            clock=lambda: now[0])
        for t in (1_900_000_000.25, 1_900_000_000.75, 1_900_000_001.0, 1_900_003_600.5):
            now[0] = t
            self.assertEqual(composer._date_header(), email.utils.formatdate(t, usegmt=True))


class RandomHexTests(unittest.TestCase):
    def test_tokens_are_hex_of_the_right_size_and_never_repeat(self):
        tokens = RandomHex(10)
        seen = [tokens() for _ in range(3 * RandomHex.BUFFER + 7)]  # several refills
        self.assertEqual({len(t) for t in seen}, {20})
        self.assertEqual(len(set(seen)), len(seen))
        int(seen[0], 16)

    def test_a_forked_child_does_not_repeat_its_parent(self):
        tokens = RandomHex(10)
        tokens()  # the buffer is filled before the fork
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its next tokens, to the parent
            try:
                os.write(write, "".join(tokens() for _ in range(5)).encode())
            finally:
                os._exit(0)
        os.close(write)
        child = os.read(read, 1000).decode()
        os.close(read)
        os.waitpid(pid, 0)
        parent = "".join(tokens() for _ in range(5))
        self.assertEqual(len(child), 100)
        self.assertNotEqual(child, parent)


class AddressHeaderTests(unittest.TestCase):
    def test_same_as_formataddr_for_every_kind_of_name(self):
        rng = random.Random(12)
        alphabet = "abcXYZ019 .,;:@<>()[]\\\"'!#$%&*+/=?^_`{|}~-\t\r\néü="
        names = ["", "Ada", "Ada Lovelace", "Student Number 7", "=?utf-8?q?x?=", "a=?b"]
        names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))
                  for _ in range(3000)]
        for name in names:
            display = header_text(name) if name else ""
            if "=?" in display:
                continue  # encoded by email.header, not formataddr (unchanged)
            expected = "To: " + email.utils.formataddr((display, "a@example.org"), charset="utf-8")
            self.assertEqual(address_header("To", name, "a@example.org"), expected, repr(name))

    def test_user_data_cannot_add_a_header_line(self):
        header = address_header("To", "Ada\r\nBcc: evil@example.org", "a@example.org")
        self.assertNotIn("\n", header)


class TextPartTests(unittest.TestCase):
    def test_long_lines_are_quoted_printable_whatever_the_size(self):
        for length, cte in ((997, "7bit"), (998, "7bit"), (999, "quoted-printable"),
                            (2000, "quoted-printable")):
            self.assertEqual(encode_text_part("x" * length)[0], cte, length)
        self.assertEqual(encode_text_part(("y" * 900 + "\n") * 3)[0], "7bit")
        self.assertEqual(encode_text_part("a\r\nb\rc"), ("7bit", b"a\nb\nc\n"))
