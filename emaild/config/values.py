"""
The value parsers of the configuration: each takes a raw value (from TOML,
or a string from the environment) and returns the typed value or raises
ValueError with a human explanation; L{parse_value} turns that into a
L{ConfigError} naming the key.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from emaild.config.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(value: Any) -> float:
    """
    C{"30s"}, C{"5m"}, C{"1h"}, C{"250ms"}, C{"2d"} or a number of seconds.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '30s', got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(
                f"expected a duration such as '30s', '5m' or '1h', got {value!r}"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def integer(minimum: int = 0) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ValueError(f"expected a whole number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def number(positive: bool = False) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        if value < 0 or (positive and value == 0):
            raise ValueError(
                f"must be {'greater than' if positive else 'at least'} 0, got {value}"
            )
        return float(value)

    return parse


def choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    return parse


def weekday(value: Any) -> str:
    days = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    lowered = value.strip().lower() if isinstance(value, str) else value
    if lowered not in days:
        raise ValueError(f"must be a day of the week (monday … sunday); got {value!r}")
    return lowered


def hour(value: Any) -> int:
    hour = integer(0)(value)
    if hour > 23:
        raise ValueError(f"must be an hour from 0 to 23, got {hour}")
    return hour


def boolean(value: Any) -> bool:
    """
    C{true}/C{false} (TOML), or from the environment C{true}, C{false},
    C{yes}, C{no}, C{1}, C{0}.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
    raise ValueError(f"expected true or false, got {value!r}")


_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: Any) -> int:
    """
    A number of bytes, or C{"512KB"}, C{"10MB"}, C{"1GB"} (powers of 1024;
    C{K}, C{KB} and C{KiB} all mean 1024 bytes).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '10MB', got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"expected a size such as '512KB' or '10MB', got {value!r}")
        size = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "")[:1].lower()]
    if size < 1:
        raise ValueError(f"must be at least 1 byte, got {value!r}")
    return size


def message_size(value: Any) -> int:
    """L{parse_size}, within what the store's 32-bit size column holds."""
    size = parse_size(value)
    if size >= 2**31:
        raise ValueError(f"must be under 2GB (the store records sizes as 32-bit), got {value!r}")
    return size


def durations(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"expected a non-empty list of durations such as ['30s', '5m'], got {value!r}"
        )
    return tuple(parse_duration(item) for item in value)


def endpoint(value: Any) -> str:
    value = string(value)
    if ":" not in value:
        raise ValueError(
            f"expected a Twisted endpoint string such as "
            f"'tcp:8080:interface=127.0.0.1', got {value!r}"
        )
    return value


def url(value: Any) -> str:
    value = string(value).rstrip("/")
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def domain(value: Any) -> str:
    value = string(value).strip().lower()
    if not re.match(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$", value):
        raise ValueError(f"expected a domain name, got {value!r}")
    return value


def optional_domain(value: Any) -> str:
    return domain(value) if string(value).strip() else ""


def address(value: Any) -> str:
    value = string(value).strip()
    if value and not re.match(r"^[^@\s<>\"(),;:]+@[^@\s<>\"(),;:]+$", value):
        raise ValueError(f"expected a plain e-mail address such as a@example.org, got {value!r}")
    return value


def addresses(value: Any) -> tuple[str, ...]:
    """
    A list of plain e-mail addresses.  From the environment: comma-separated.
    """
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise ValueError(f"expected a list of addresses such as ['ops@example.org'], got {value!r}")
    found = []
    for item in value:
        checked = address(item)
        if not checked:
            raise ValueError("an empty string is not an address")
        found.append(checked)
    return tuple(dict.fromkeys(found))


def local_part(value: Any) -> str:
    value = string(value).strip().lower()
    if not re.match(r"^[a-z0-9]([a-z0-9.]*[a-z0-9])?$", value):
        raise ValueError(f"expected letters, digits and dots such as 'group', got {value!r}")
    return value


def origins(value: Any) -> tuple[str, ...]:
    """
    A list of origins (scheme://host[:port], no path), e.g. the LMS that may
    frame our pages.  From the environment: comma-separated.
    """
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise ValueError(f"expected a list of origins such as ['https://lms.example.org'], got {value!r}")
    origins = []
    for item in value:
        if not isinstance(item, str) or not re.match(r"^https?://[A-Za-z0-9.-]+(:\d+)?$", item.rstrip("/")):
            raise ValueError(f"{item!r} is not an origin like https://lms.example.org (no path)")
        origins.append(item.rstrip("/").lower())
    return tuple(origins)


def consumers(value: Any) -> dict[str, str]:
    """
    LTI consumer key -> shared secret.  A TOML table, or from the environment
    C{key1=secret1,key2=secret2}.
    """
    if isinstance(value, str):
        pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("expected key=secret pairs separated by commas")
        value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict):
        raise ValueError("expected a table of consumer key = secret")
    for key, secret in value.items():
        if not isinstance(secret, str) or not secret:
            raise ValueError(f"the secret of consumer {key!r} must be a non-empty string")
        if len(secret) < 16:
            raise ValueError(f"the secret of consumer {key!r} is shorter than 16 characters")
    return dict(value)


def positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be longer than 0 seconds, got {value!r}")
    return seconds


def dns_servers(value: Any) -> tuple[tuple[str, int], ...]:
    """
    DNS resolvers as C{host:port} strings (C{[::1]:53} for IPv6; the port
    defaults to 53); an empty list means the system's (C{/etc/resolv.conf}).
    From the environment: comma-separated.
    """
    import ipaddress

    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise ValueError(f"expected a list such as ['127.0.0.1:53'], got {value!r}")
    servers = []
    for item in value:
        match = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]+))(?::(\d{1,5}))?$",
                         item.strip()) if isinstance(item, str) else None
        if not match:
            raise ValueError(f"{item!r} is not a resolver address such as '127.0.0.1:53' or "
                             "'[::1]:53' (an IP address: the resolver itself is not looked up)")
        host = match.group(1) or match.group(2)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{item!r}: {host!r} is not an IP address") from None
        port = int(match.group(3) or 53)
        if not 0 < port < 65536:
            raise ValueError(f"{item!r}: port {port} is out of range")
        servers.append((host, port))
    return tuple(servers)


def api_tokens(value: Any) -> tuple[str, ...]:
    """
    Bearer tokens for the JSON API: a list of strings, each at least 32
    characters with no spaces or commas.  From the environment: comma-separated.
    """
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise ValueError("expected a list of tokens such as ['<32 or more random characters>']")
    for n, token in enumerate(value, 1):
        if not isinstance(token, str):
            raise ValueError(f"token {n} must be a string, got {type(token).__name__}")
        if len(token) < 32:
            raise ValueError(f"token {n} is shorter than 32 characters "
                             "(make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        if not re.match(r"^[\x21-\x7e]+$", token) or "," in token:
            raise ValueError(f"token {n} must be printable ASCII without spaces or commas")
    return tuple(value)


def parse_value(key: str, parser: Callable[[Any], Any], raw: Any) -> Any:
    try:
        return parser(raw)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None
