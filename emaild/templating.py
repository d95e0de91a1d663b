"""
Where templates come from: the operator's folder (C{[templates] dir}) first,
then the built-ins shipped with emaild.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jinja2


def builtin_templates_dir() -> Path:
    """
    The built-in C{templates/} folder: beside the package in a source checkout
    or editable install, under C{<prefix>/share/emaild} in a normal install.
    """
    here = Path(__file__).resolve().parent.parent / "templates"
    if here.is_dir():
        return here
    installed = Path(sys.prefix) / "share" / "emaild" / "templates"
    if installed.is_dir():
        return installed
    raise RuntimeError(f"emaild's built-in templates are missing (looked in {here} and {installed})")


def search_path(operator_dir: str, part: str) -> list[str]:
    """
    Folders to search for C{part} templates (C{"email"} or C{"web"}).
    """
    paths = []
    if operator_dir:
        operator = Path(operator_dir).expanduser()
        if not operator.is_dir():
            raise FileNotFoundError(f"templates.dir: folder {operator} does not exist")
        paths.append(str(operator / part))
    paths.append(str(builtin_templates_dir() / part))
    return paths


def environment(operator_dir: str, part: str) -> jinja2.Environment:
    """
    A Jinja2 environment for C{part}: HTML autoescaped, undefined variables
    an error (a missing context value must be noticed at enqueue time, not
    mailed as an empty string).
    """
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(search_path(operator_dir, part)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "htm", "xml"),
                                            default_for_string=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        auto_reload=False,
    )
