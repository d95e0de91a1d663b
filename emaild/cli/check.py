"""
C{emaild check}: the configuration, the database and every template, one
line each, so an operator sees everything that is wrong at once.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Awaitable, Callable

import jinja2

from emaild.cli.output import CheckReport, CliError, one_line
from emaild.cli.runtime import open_database
from emaild.outbound.compose import ComposeError

#: files in a template folder worth compiling (not editor backups, dot files)
TEMPLATE_FILES = (".txt", ".html", ".htm", ".xml", ".j2", ".jinja")


def add_parser(commands, common) -> None:
    check = commands.add_parser("check", parents=[common], help="validate config, database and templates",
                                description="Validate the configuration, connect to the database "
                                            "and compile every template.")
    check.set_defaults(func=run)


async def run(parts, args) -> int:
    where = (f"embedded PostgreSQL in {parts.embedded.data_dir}" if parts.embedded is not None
             else one_line(parts.config["database"]["url"]))

    async def open_db():
        await open_database(parts)
        return where

    return await run_checks(parts, open_db)


def compile_all(report: CheckReport, env: jinja2.Environment, label: str, skip=()) -> None:
    """
    Compile every template file of C{env} except those in C{skip}.
    """
    for name in env.list_templates():
        if name in skip or Path(name).name.startswith(".") or not name.endswith(TEMPLATE_FILES):
            continue
        try:
            env.get_template(name)
        except jinja2.TemplateSyntaxError as e:
            report.fail(f"{label} {name}", f"line {e.lineno}: {e.message}")
        except (jinja2.TemplateError, UnicodeDecodeError, OSError) as e:
            report.fail(f"{label} {name}", one_line(e))
        else:
            report.ok(f"{label} {name}", "compiled")


async def run_checks(parts, open_db: Callable[[], Awaitable[str]]) -> int:
    """
    Print one line per check; return 0 when all passed, else 1 (and list
    the failed items on stderr).

    @param parts: the L{emaild.cli.runtime.CommandParts}.
    @param open_db: opens (and migrates) the database; returns a
        description of where it is, or raises L{CliError}.
    """
    from emaild.db.migrations import available, schema_version
    from emaild.templating import environment

    config, db = parts.config, parts.get_database()

    report = CheckReport()
    report.ok("config", str(Path(config.source).absolute()) if config.source
              else "built-in defaults (no --config or $EMAILD_CONFIG)")

    try:
        where = await open_db()
        version = await schema_version(db)
        latest = available()[-1][0]
        if version < latest:
            report.fail("database", f"{where}: schema version {version}, expected {latest}")
        else:
            report.ok("database", f"reachable ({where}), migrations current (version {version})")
    except CliError as e:
        report.fail("database", e.message)

    template_dir = config["templates"]["dir"]
    try:
        composer = parts.get_composer()
    except (FileNotFoundError, RuntimeError) as e:
        report.fail("templates", str(e))
    else:
        covered = set()
        for name in composer.template_names():
            covered.update({f"{name}.subject.txt", f"{name}.txt", f"{name}.html"})
            try:
                _subject, _text, html = composer.templates(name)
            except ComposeError as e:
                report.fail(f"template {name}", str(e))
            else:
                report.ok(f"template {name}", "subject, text" + (", html" if html is not None else ""))
        # partials and layouts the templates include
        compile_all(report, composer.env, "template file", skip=covered)
        compile_all(report, environment(template_dir, "web"), "web template")

    if report.failed:
        print(f"emaild check: {len(report.failed)} of {len(report.failed) + report.passed} checks "
              f"failed: {', '.join(report.failed)}", file=sys.stderr)
        return 1
    print(f"all {report.passed} checks passed")
    return 0
