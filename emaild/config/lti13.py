"""
The C{[lti13.platforms.<name>]} tables: the LMSs emaild is registered with
as an LTI 1.3 tool.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from emaild.config.errors import ConfigError
from emaild.config.records import Lti13Platform
from emaild.config.values import parse_value, string

_PLATFORM_KEYS = ("issuer", "client_id", "auth_login_url", "auth_token_url", "key_set_url",
                  "deployment_ids", "lti11_consumer_key")


def exact_url(value: Any) -> str:
    value = string(value).strip()
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def non_empty(value: Any) -> str:
    value = string(value).strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def deployment_ids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of deployment ids such as ['1'], got {value!r}")
    ids = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"every deployment id must be a non-empty string, got {item!r}")
        ids.append(item.strip())
    return tuple(dict.fromkeys(ids))


def pop_lti13_platforms(raw: dict, overrides) -> dict:
    """
    Take the C{[lti13.platforms.*]} tables out of the file's C{[lti13]} (so
    the rest of C{[lti13]} is checked like any section), with the
    overrides' C{lti13.platforms} on top (their other keys are ignored here).
    """
    platforms: dict = {}
    layers = []
    table = raw.get("lti13")
    if isinstance(table, dict) and "platforms" in table:
        layers.append(table.pop("platforms"))
    if overrides and isinstance(overrides.get("lti13"), dict):
        layers.append(overrides["lti13"].get("platforms", {}))
    for layer in layers:
        if not isinstance(layer, dict):
            raise ConfigError("lti13.platforms", "must be tables such as [lti13.platforms.canvas]")
        platforms.update(layer)
    return platforms


def lti13_platforms(raw: Mapping[str, Any], consumers: Mapping[str, str]) -> dict:
    parsers = {"issuer": exact_url, "client_id": non_empty, "auth_login_url": exact_url,
               "auth_token_url": exact_url, "key_set_url": exact_url,
               "deployment_ids": deployment_ids, "lti11_consumer_key": string}
    platforms = {}
    seen: dict[tuple[str, str], str] = {}
    for name, table in raw.items():
        where = f"lti13.platforms.{name}"
        if not re.match(r"^[a-z0-9][a-z0-9_-]*$", str(name)):
            raise ConfigError(where, "platform names are lower-case letters, digits, '-' and '_'")
        if not isinstance(table, dict):
            raise ConfigError(where, f"must be a table [{where}]")
        for key in table:
            if key not in _PLATFORM_KEYS:
                raise ConfigError(f"{where}.{key}", f"unknown key; known: {', '.join(_PLATFORM_KEYS)}")
        typed = {}
        for key in _PLATFORM_KEYS:
            if key not in table:
                if key == "lti11_consumer_key":
                    continue
                raise ConfigError(f"{where}.{key}", "is required")
            typed[key] = parse_value(f"{where}.{key}", parsers[key], table[key])
        if typed.get("lti11_consumer_key") and typed["lti11_consumer_key"] not in consumers:
            raise ConfigError(f"{where}.lti11_consumer_key",
                              f"{typed['lti11_consumer_key']!r} is not a key of [lti.consumers]")
        pair = (typed["issuer"], typed["client_id"])
        if pair in seen:
            raise ConfigError(f"{where}.client_id", f"platform {seen[pair]!r} has the same issuer "
                              "and client_id; one of them is a duplicate")
        seen[pair] = name
        platforms[name] = Lti13Platform(name=name, **typed)
    return platforms
