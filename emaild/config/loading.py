"""
Loading the configuration: the TOML file, then C{EMAILD_<SECTION>_<KEY>}
environment overrides, then the caller's overrides, every value checked
against L{emaild.config.schema}.
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any, Mapping

from emaild.config.errors import ConfigError
from emaild.config.lti13 import lti13_platforms, pop_lti13_platforms
from emaild.config.records import Config, MailKind, QoSClass
from emaild.config.schema import BUILTIN_KINDS, BUILTIN_QOS, KIND_SCHEMA, QOS_SCHEMA, SCHEMA
from emaild.config.values import parse_value

#: environment variables with the EMAILD_ prefix that are not overrides
_NOT_OVERRIDES = {"EMAILD_CONFIG", "EMAILD_TEST_DATABASE_URL"}


def _env_overrides(environ: Mapping[str, str], qos_names: set[str]) -> dict[str, dict[str, str]]:
    """
    Map C{EMAILD_RELAY_PASSWORD=x} to C{{"relay": {"password": "x"}}},
    C{EMAILD_QOS_BULK_RATE=2} to C{{"qos.bulk": {"rate": "2"}}} and
    C{EMAILD_KINDS_DIGEST_QOS=bulk} to C{{"kinds.digest": {"qos": "bulk"}}}.
    """
    found: dict[str, dict[str, str]] = {}
    for var, value in environ.items():
        if not var.startswith("EMAILD_") or var in _NOT_OVERRIDES:
            continue
        rest = var[len("EMAILD_"):].lower()
        target = None
        for section, keys in SCHEMA.items():
            if rest.startswith(section + "_") and rest[len(section) + 1:] in keys:
                target = (section, rest[len(section) + 1:])
        if target is None and rest.startswith("qos_"):
            for key in QOS_SCHEMA:
                if rest.endswith("_" + key) and len(rest) > len("qos_" + key) + 1:
                    target = ("qos." + rest[len("qos_"): -len(key) - 1], key)
        if target is None and rest.startswith("kinds_"):
            for key in KIND_SCHEMA:
                if rest.endswith("_" + key) and len(rest) > len("kinds_" + key) + 1:
                    target = ("kinds." + rest[len("kinds_"): -len(key) - 1], key)
        if target is None:
            raise ConfigError(
                var,
                "unknown environment override; expected EMAILD_<SECTION>_<KEY> "
                "for a key that exists, e.g. EMAILD_RELAY_PASSWORD",
            )
        found.setdefault(target[0], {})[target[1]] = value
    return found


def load_config(
    path: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """
    Read the TOML file at C{path} (none: defaults only), apply environment
    overrides and then C{overrides} (used by tests), and validate everything.

    @raise ConfigError: naming the first bad key.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source = None
    if path:
        source = str(path)
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError("config", f"file {source} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("config", f"{source} is not valid TOML: {e}") from None

    qos_raw = raw.pop("qos", {})
    if not isinstance(qos_raw, dict):
        raise ConfigError("qos", "must be tables such as [qos.bulk]")
    kinds_raw = raw.pop("kinds", {})
    if not isinstance(kinds_raw, dict):
        raise ConfigError("kinds", "must be tables such as [kinds.digest]")
    platforms_raw = pop_lti13_platforms(raw, overrides)

    layered: dict[str, dict[str, Any]] = {}
    for section, table in raw.items():
        if section not in SCHEMA:
            raise ConfigError(section, f"unknown section [{section}]; known: {', '.join(sorted(SCHEMA))}, qos.<name>, kinds.<name>")
        if not isinstance(table, dict):
            raise ConfigError(section, f"must be a table [{section}]")
        for key in table:
            if key not in SCHEMA[section]:
                raise ConfigError(f"{section}.{key}", f"unknown key in [{section}]; known: {', '.join(SCHEMA[section])}")
        layered[section] = dict(table)
    qos_tables: dict[str, dict[str, Any]] = {n: dict(t) for n, t in BUILTIN_QOS.items()}
    for name, table in qos_raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"qos.{name}", "must be a table [qos.<name>]")
        for key in table:
            if key not in QOS_SCHEMA:
                raise ConfigError(f"qos.{name}.{key}", f"unknown key; known: {', '.join(QOS_SCHEMA)}")
        qos_tables.setdefault(name, {}).update(table)
    kind_tables: dict[str, dict[str, Any]] = {n: dict(t) for n, t in BUILTIN_KINDS.items()}
    for name, table in kinds_raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"kinds.{name}", "must be a table [kinds.<name>]")
        for key in table:
            if key not in KIND_SCHEMA:
                raise ConfigError(f"kinds.{name}.{key}", f"unknown key; known: {', '.join(KIND_SCHEMA)}")
        kind_tables.setdefault(name, {}).update(table)

    for layer in (_env_overrides(environ, set(qos_tables)), overrides or {}):
        for section, table in layer.items():
            if section.startswith("qos."):
                qos_tables.setdefault(section[4:], {}).update(table)
            elif section.startswith("kinds."):
                for key in table:
                    if key not in KIND_SCHEMA:
                        raise ConfigError(f"{section}.{key}", f"unknown key; known: {', '.join(KIND_SCHEMA)}")
                kind_tables.setdefault(section[6:], {}).update(table)
            else:
                if section not in SCHEMA:
                    raise ConfigError(section, "unknown section")
                layered.setdefault(section, {}).update(table)

    values: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        given = layered.get(section, {})
        values[section] = {}
        for key, (parser, default) in keys.items():
            if key in given:
                values[section][key] = parse_value(f"{section}.{key}", parser, given[key])
            else:
                values[section][key] = default
    qos: dict[str, QoSClass] = {}
    for name, table in qos_tables.items():
        if not re.match(r"^[a-z0-9][a-z0-9_-]*$", name):
            raise ConfigError(f"qos.{name}", "class names are lower-case letters, digits, '-' and '_'")
        typed = {}
        for key, (parser, default) in QOS_SCHEMA.items():
            typed[key] = parse_value(f"qos.{name}.{key}", parser, table.get(key, default))
        qos[name] = QoSClass(name=name, **typed)
    kinds: dict[str, MailKind] = {}
    for name, table in kind_tables.items():
        if not re.match(r"^[a-z0-9][a-z0-9_-]*$", name):
            raise ConfigError(f"kinds.{name}", "kind names are lower-case letters, digits, '-' and '_'")
        typed = {}
        for key, (parser, default) in KIND_SCHEMA.items():
            typed[key] = parse_value(f"kinds.{name}.{key}", parser, table.get(key, default))
        if typed["qos"] not in qos:
            raise ConfigError(f"kinds.{name}.qos", f"no QoS class {typed['qos']!r}; configured: "
                              f"{', '.join(sorted(qos))}")
        typed["description"] = " ".join(typed["description"].split()) or name
        kinds[name] = MailKind(name=name, **typed)

    relay = values["relay"]
    if relay["burst"] is None:
        # Our tokens are counted when a message is claimed, the relay's when
        # it arrives; start-up latency bunches the first burst's arrivals, so
        # a burst equal to the relay's one-second allowance (SES) ends the
        # first second with a 454.  Half a second's worth leaves room.
        relay["burst"] = max(1.0, relay["rate"] / 2)
    if relay["burst"] < 1:
        raise ConfigError("relay.burst", "must be at least 1 (one recipient)")
    if relay["transport"] == "smtp" and relay["tls"] == "none" and relay["username"]:
        raise ConfigError(
            "relay.tls", "is 'none' while relay.username is set: credentials would travel in clear"
        )
    platforms = lti13_platforms(platforms_raw, values["lti"]["consumers"])
    return Config(values=values, qos=qos, source=source, kinds=kinds,
                  lti13_platforms=platforms)
