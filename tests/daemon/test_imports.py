"""
Every module of emaild imports first, alone, in a fresh interpreter: no
import cycle works only in one order (as the web routes once did, where
C{import emaild.web.routes_api} first raised ImportError).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from twisted.trial import unittest

import emaild

ROOT = Path(emaild.__file__).parent


def every_module() -> list[str]:
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def import_alone(name: str, then: str = "") -> tuple[str, int, str]:
    # not -I (isolated): the checkout on PYTHONPATH is the emaild under test
    result = subprocess.run([sys.executable, "-c", f"import {name}\n{then}"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT.parent)})
    return name, result.returncode, result.stderr


class ImportTests(unittest.TestCase):
    def test_the_list_is_complete(self):
        modules = every_module()
        self.assertIn("emaild.web.routes_api", modules)
        self.assertIn("emaild.homeserver", modules)
        self.assertGreater(len(modules), 50)

    def test_every_module_imports_first_alone(self):
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            results = list(pool.map(import_alone, every_module()))
        failures = [f"{name}:\n{stderr.strip().splitlines()[-1] if stderr.strip() else code}"
                    for name, code, stderr in results if code != 0]
        self.assertEqual(failures, [], "\n".join(failures))

    def test_route_modules_do_not_import_the_app(self):
        routes = [name for name in every_module()
                  if name.startswith(("emaild.web.routes_", "emaild.web.api_"))]
        check = "import sys; assert 'emaild.web.app' not in sys.modules, 'imports the app'"
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            results = list(pool.map(lambda name: import_alone(name, check), routes))
        self.assertEqual([name for name, code, _ in results if code != 0], [])
        self.assertIn("emaild.web.routes_lti", routes)

    def test_the_plugin_imports_alone(self):
        plugin = ROOT.parent / "twisted" / "plugins" / "emaild_plugin.py"
        result = subprocess.run([sys.executable, str(plugin)], capture_output=True, text=True,
                                timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT.parent)})
        self.assertEqual(result.returncode, 0, result.stderr)
