"""
Templates ship inside the package and load through Jinja2's PackageLoader,
with the operator's folder first.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
from twisted.trial import unittest

import emaild
from emaild.templating import environment, loader, static_folder

PACKAGE_DIR = Path(emaild.__file__).resolve().parent
REPO = PACKAGE_DIR.parent


class BuiltinTests(unittest.TestCase):
    def test_builtins_come_from_the_package(self):
        for part, name in (("email", "plain.txt"), ("web", "base.html")):
            env = environment("", part)
            self.assertIsInstance(env.loader, jinja2.PackageLoader)
            found = Path(env.get_template(name).filename).resolve()
            self.assertEqual(found, PACKAGE_DIR / "templates" / part / name)
        self.assertEqual(static_folder(""), PACKAGE_DIR / "templates" / "web" / "static")

    def test_no_templates_folder_outside_the_package(self):
        self.assertFalse((REPO / "templates").exists())

    def test_found_without_a_checkout(self):
        """
        A copy of the package alone (no repository around it, as in
        site-packages) finds every built-in template and its static files.
        """
        where = Path(self.mktemp()).absolute()
        shutil.copytree(PACKAGE_DIR, where / "emaild",
                        ignore=shutil.ignore_patterns("__pycache__"))
        code = ("import emaild, emaild.templating as t; "
                "e = t.environment('', 'email'); w = t.environment('', 'web'); "
                "print(emaild.__file__); print(e.get_template('login.html').filename); "
                "print(w.get_template('error.html').filename); print(t.static_folder('')); "
                "print(len(e.list_templates()), len(w.list_templates()))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=where, env={"PYTHONPATH": str(where), "PATH": "/usr/bin:/bin"},
                             check=True).stdout.splitlines()
        for line in out[:4]:
            self.assertTrue(line.startswith(str(where / "emaild")), out)
        self.assertEqual(out[4], f"{len(environment('', 'email').list_templates())} "
                                 f"{len(environment('', 'web').list_templates())}")

    def test_package_data_ships_every_template_file(self):
        setup = configparser.ConfigParser()
        setup.read(REPO / "setup.cfg")
        globs = setup["options.package_data"]["emaild"].split()
        shipped = {p for g in globs for p in PACKAGE_DIR.glob(g) if p.is_file()}
        files = {p for p in (PACKAGE_DIR / "templates").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
        self.assertEqual(files - shipped, set())
        self.assertNotIn("options.data_files", setup)


class OperatorTests(unittest.TestCase):
    def setUp(self):
        self.folder = Path(self.mktemp())
        (self.folder / "email").mkdir(parents=True)
        (self.folder / "email" / "plain.txt").write_text("ours {{ body }}\n", encoding="utf-8")

    def test_operator_folder_first_then_the_builtins(self):
        env = environment(str(self.folder), "email")
        self.assertIsInstance(env.loader, jinja2.ChoiceLoader)
        self.assertEqual(env.get_template("plain.txt").render(body="x"), "ours x\n")
        self.assertEqual(Path(env.get_template("login.txt").filename).resolve(),
                         PACKAGE_DIR / "templates" / "email" / "login.txt")

    def test_static_files_of_the_operator_first(self):
        self.assertEqual(static_folder(str(self.folder)),
                         PACKAGE_DIR / "templates" / "web" / "static")
        (self.folder / "web" / "static").mkdir(parents=True)
        self.assertEqual(static_folder(str(self.folder)), self.folder / "web" / "static")

    def test_missing_operator_folder_names_the_key(self):
        with self.assertRaises(FileNotFoundError) as e:
            loader(str(self.folder / "nope"), "email")
        self.assertIn("templates.dir", str(e.exception))
