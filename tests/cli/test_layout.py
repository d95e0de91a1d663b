"""
The CLI package's layout rules: every command module registered, none
importing another command or the package's C{__init__}, no private name
of one CLI module used in another.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from twisted.trial import unittest

from emaild.cli.main import COMMANDS, build_parser

PACKAGE = Path(importlib.import_module("emaild.cli.main").__file__).parent
#: the modules commands share (everything else in the package is a command)
SHARED = {"__init__", "main", "runtime", "output", "csv_input", "arguments", "lookup"}


def _imports(path: Path):
    """
    (imported module, [names]) for every import statement in C{path}.
    """
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


class LayoutTests(unittest.TestCase):
    def test_every_command_module_is_registered(self):
        modules = {p.stem for p in PACKAGE.glob("*.py")} - SHARED
        self.assertEqual({name.rsplit(".", 1)[-1] for name in COMMANDS}, modules)

    def test_a_module_name_is_its_command_name(self):
        parser = build_parser()
        (commands,) = [a for a in parser._actions if getattr(a, "choices", None)
                       and "send" in a.choices]
        self.assertEqual(list(commands.choices), [n.rsplit(".", 1)[-1] for n in COMMANDS])

    def test_command_modules_import_no_other_command_nor_the_package(self):
        for name in COMMANDS:
            path = PACKAGE / f"{name.rsplit('.', 1)[-1]}.py"
            forbidden = set(COMMANDS) - {name} | {"emaild.cli"}
            for module, names in _imports(path):
                self.assertNotIn(module, forbidden, f"{path.name} imports {module}")
                self.assertFalse(module == "emaild" and "cli" in names,
                                 f"{path.name} imports emaild.cli")

    def test_no_private_name_crosses_a_module(self):
        for path in PACKAGE.glob("*.py"):
            for module, names in _imports(path):
                if module.startswith("emaild"):
                    private = [n for n in names if n.startswith("_") and n != "__version__"]
                    self.assertEqual(private, [], f"{path.name} imports {private} from {module}")
