"""
Every package the code imports is declared in setup.cfg: the runtime's in
C{install_requires}, the tests' there or in the C{test} extra, the
benchmarks' there or in the C{bench} extra.  (An undeclared import works in
the development venv, where it came in with something else, and breaks a
clean install when that something stops depending on it.)
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
import re
import sys
from pathlib import Path

from twisted.trial import unittest

REPO = Path(__file__).resolve().parents[2]
#: top-level names that are this repository's own code
LOCAL = {"emaild", "tests", "bench", "scripts", "__future__"}


def imported(paths) -> dict[str, str]:
    """
    {top-level module name: a file importing it} for every absolute import
    in C{paths} (inside functions too) that is neither stdlib nor local.
    """
    found: dict[str, str] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL:
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*sections) -> set[str]:
    """
    The normalised distribution names in C{install_requires} and the given
    extras of setup.cfg.
    """
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    lines = setup["options"]["install_requires"].splitlines()
    for extra in sections:
        lines += setup["options.extras_require"][extra].splitlines()
    return {normalise(re.match(r"[A-Za-z0-9_.-]+", line.strip()).group())
            for line in lines if line.strip()}


def undeclared(found: dict[str, str], names: set[str]) -> list[str]:
    """
    The imports in C{found} that no declared distribution provides (an
    import name is mapped to the installed distributions that provide it;
    one not installed is taken to be its own distribution name).
    """
    provides = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(found.items()):
        dists = {normalise(d) for d in provides.get(module, [module])} - {"emaild"}
        if not dists & names:
            missing.append(f"{module} (imported in {where}; distributions: "
                           f"{', '.join(sorted(dists))})")
    return missing


class DeclaredTests(unittest.TestCase):
    def test_runtime_imports_are_in_install_requires(self):
        code = [*(REPO / "emaild").rglob("*.py"), *(REPO / "twisted" / "plugins").glob("*.py"),
                REPO / "emaild.tac"]
        self.assertEqual(undeclared(imported(code), declared()), [])

    def test_test_imports_are_declared(self):
        self.assertEqual(undeclared(imported((REPO / "tests").rglob("*.py")),
                                    declared("test")), [])

    def test_bench_and_script_imports_are_declared(self):
        code = [*(REPO / "bench").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]
        self.assertEqual(undeclared(imported(code), declared("bench")), [])

    def test_the_check_sees_an_undeclared_import(self):
        self.assertEqual(undeclared({"werkzeug": "x.py"}, {"klein"}),
                         ["werkzeug (imported in x.py; distributions: werkzeug)"])
        self.assertEqual(undeclared({"OpenSSL": "x.py"}, {"pyopenssl"}), [])
