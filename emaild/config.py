"""
emaild's configuration: one TOML file, every key with a default, and
environment overrides named C{EMAILD_<SECTION>_<KEY>}.

Every key is declared once in L{SCHEMA} with its type and default; the loader
refuses unknown keys and bad values with a L{ConfigError} naming the key, so a
typo stops start-up instead of silently falling back to a default.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs


class ConfigError(Exception):
    """
    The configuration is unusable; the message names the key and the problem.
    """

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# -- value parsers -----------------------------------------------------------
# Each takes the raw value (from TOML, or a string from the environment) and
# returns the typed value or raises ValueError with a human explanation.

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


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _integer(minimum: int = 0) -> Callable[[Any], int]:
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


def _number(positive: bool = False) -> Callable[[Any], float]:
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


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    return parse


def _weekday(value: Any) -> str:
    days = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    lowered = value.strip().lower() if isinstance(value, str) else value
    if lowered not in days:
        raise ValueError(f"must be a day of the week (monday … sunday); got {value!r}")
    return lowered


def _hour(value: Any) -> int:
    hour = _integer(0)(value)
    if hour > 23:
        raise ValueError(f"must be an hour from 0 to 23, got {hour}")
    return hour


def _boolean(value: Any) -> bool:
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


def _message_size(value: Any) -> int:
    """L{parse_size}, within what the store's 32-bit size column holds."""
    size = parse_size(value)
    if size >= 2**31:
        raise ValueError(f"must be under 2GB (the store records sizes as 32-bit), got {value!r}")
    return size


def _durations(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"expected a non-empty list of durations such as ['30s', '5m'], got {value!r}"
        )
    return tuple(parse_duration(item) for item in value)


def _endpoint(value: Any) -> str:
    value = _string(value)
    if ":" not in value:
        raise ValueError(
            f"expected a Twisted endpoint string such as "
            f"'tcp:8080:interface=127.0.0.1', got {value!r}"
        )
    return value


def _url(value: Any) -> str:
    value = _string(value).rstrip("/")
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _domain(value: Any) -> str:
    value = _string(value).strip().lower()
    if not re.match(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$", value):
        raise ValueError(f"expected a domain name, got {value!r}")
    return value


def _optional_domain(value: Any) -> str:
    return _domain(value) if _string(value).strip() else ""


def _address(value: Any) -> str:
    value = _string(value).strip()
    if value and not re.match(r"^[^@\s<>\"(),;:]+@[^@\s<>\"(),;:]+$", value):
        raise ValueError(f"expected a plain e-mail address such as a@example.org, got {value!r}")
    return value


def _addresses(value: Any) -> tuple[str, ...]:
    """
    A list of plain e-mail addresses.  From the environment: comma-separated.
    """
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise ValueError(f"expected a list of addresses such as ['ops@example.org'], got {value!r}")
    found = []
    for item in value:
        address = _address(item)
        if not address:
            raise ValueError("an empty string is not an address")
        found.append(address)
    return tuple(dict.fromkeys(found))


def _local_part(value: Any) -> str:
    value = _string(value).strip().lower()
    if not re.match(r"^[a-z0-9]([a-z0-9.]*[a-z0-9])?$", value):
        raise ValueError(f"expected letters, digits and dots such as 'group', got {value!r}")
    return value


def _origins(value: Any) -> tuple[str, ...]:
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


def _consumers(value: Any) -> dict[str, str]:
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


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"must be longer than 0 seconds, got {value!r}")
    return seconds


def _dns_servers(value: Any) -> tuple[tuple[str, int], ...]:
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


def _api_tokens(value: Any) -> tuple[str, ...]:
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


# -- the schema --------------------------------------------------------------

#: section -> key -> (parser, default).  A default of None means "no value".
SCHEMA: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
    "paths": {
        "state_dir": (_string, "./var"),
    },
    "database": {
        "url": (_string, ""),
        "pool_size": (_integer(1), 4),
    },
    "http": {
        "endpoint": (_endpoint, "tcp:8080:interface=127.0.0.1"),
        "public_url": (_url, "http://127.0.0.1:8080"),
    },
    "smtp": {
        "endpoint": (_endpoint, "tcp:2525:interface=127.0.0.1"),
        "relay_domain": (_domain, "localhost"),
        "hostname": (_optional_domain, ""),
        "max_sessions": (_integer(1), 40),
        "max_message_size": (_message_size, 10 * 1024 * 1024),
        "max_recipients": (_integer(1), 100),
        "idle_timeout": (parse_duration, 300.0),
        "max_commands": (_integer(1), 1000),
        "max_errors": (_integer(1), 20),
        "max_sessions_per_client": (_integer(1), 5),
        "max_connections_per_minute": (_integer(1), 60),
        "command_timeout": (parse_duration, 300.0),
        "data_timeout": (parse_duration, 600.0),
        "tls_certificate": (_string, ""),
        "tls_key": (_string, ""),
        # in-flow control (emaild/inbound/inflow.py): rows waiting for the
        # relay processor above which new mail is delayed, the longest
        # delay, and the rows above which it gets 451 (0: never)
        "in_flow_backlog": (_integer(0), 2000),
        "in_flow_delay": (parse_duration, 1.0),
        "in_flow_refuse": (_integer(0), 20000),
    },
    "mail": {
        "from_address": (_address, ""),
        "from_name": (_string, "emaild"),
    },
    "relay": {
        "transport": (_choice("maildir", "smtp"), "maildir"),
        "host": (_string, "localhost"),
        "port": (_integer(1), 587),
        "tls": (_choice("starttls", "implicit", "none"), "starttls"),
        "username": (_string, ""),
        "password": (_string, ""),
        "ca_file": (_string, ""),
        "helo_name": (_string, ""),
        "rate": (_number(positive=True), 14.0),
        "burst": (_number(positive=True), None),  # None: half of rate, at least 1
        "daily_quota": (_integer(0), 0),
        "connections": (_integer(1), 4),
        "connect_timeout": (parse_duration, 30.0),
        "reply_timeout": (parse_duration, 60.0),
        "lease": (parse_duration, 300.0),
        "shutdown_grace": (parse_duration, 10.0),
        "poll_interval": (parse_duration, 10.0),
    },
    "templates": {
        "dir": (_string, ""),
    },
    "web": {
        "session_idle": (parse_duration, 8 * 3600.0),
        "session_max": (parse_duration, 30 * 86400.0),
        "allowed_origins": (_origins, ()),
        "lms_origins": (_origins, ()),
        "fresh_link_limit": (_integer(1), 3),
        "fresh_link_window": (parse_duration, 3600.0),
    },
    "links": {
        "salt": (_string, "emaild links"),
        "login_ttl": (parse_duration, 30 * 86400.0),
        "unsubscribe_ttl": (parse_duration, 365 * 86400.0),
        # "Did you send this?" links for held group posts
        "hold_ttl": (parse_duration, 7 * 86400.0),
    },
    "groups": {
        "address_prefix": (_local_part, "group"),
        "address_salt": (_string, ""),
        "hard_bounce_limit": (_integer(1), 3),
        "max_posts_per_hour": (_integer(0), 30),
        # what happens to a member's post that their domain does not vouch
        # for (no aligned SPF or DKIM pass) and whose DMARC policy is not
        # reject/quarantine (see emaild.inbound.auth)
        "unauthenticated": (_choice("hold", "refuse", "relay"), "hold"),
    },
    "dns": {
        "servers": (_dns_servers, ()),
        "timeout": (_positive_duration, 5.0),
    },
    "lti": {
        "consumers": (_consumers, {}),
        "group_parameter": (_string, "custom_group"),
        "timestamp_window": (parse_duration, 300.0),
        # LTI requests (login and launch, 1.1 and 1.3) per client address
        # (emaild.web.lti_limits): per second, 0 for no limit; and the burst
        "client_rate": (_number(), 5.0),
        "client_burst": (_number(positive=True), 300.0),
    },
    "api": {
        "tokens": (_api_tokens, ()),
        "max_body": (parse_size, 1024 * 1024),
    },
    "notifications": {
        "online_window": (parse_duration, 300.0),
        "active_window": (parse_duration, 3600.0),
        "daily_limit": (_integer(0), 3),
    },
    "admin": {
        "addresses": (_addresses, ()),
        "report_interval": (parse_duration, 3600.0),
    },
    "lti13": {
        "state_ttl": (parse_duration, 600.0),
        "leeway": (parse_duration, 60.0),
        "jwks_timeout": (parse_duration, 10.0),
        "nrps_interval": (parse_duration, 86400.0),
    },
    "digest": {
        "enabled": (_boolean, True),
        "weekday": (_weekday, "monday"),
        "hour": (_hour, 8),
        "chunk_size": (_integer(1), 500),
    },
}

#: keys of each [qos.<name>] table
QOS_SCHEMA: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "priority": (_integer(0), 50),
    "max_attempts": (_integer(1), 8),
    "backoff": (_durations, ["30s", "2m", "10m", "1h"]),
    "rate": (_number(), 0.0),
}

#: the classes every installation has; [qos.<name>] tables override their
#: keys and may add more classes
BUILTIN_QOS: dict[str, dict[str, Any]] = {
    "transactional": {"priority": 100, "max_attempts": 10, "backoff": ["10s", "1m", "5m", "30m"]},
    "default": {"priority": 50, "max_attempts": 8, "backoff": ["30s", "2m", "10m", "1h"]},
    "notification": {"priority": 40, "max_attempts": 6, "backoff": ["1m", "10m", "1h"]},
    "bulk": {"priority": 10, "max_attempts": 6, "backoff": ["5m", "30m", "2h"]},
}

#: keys of each [kinds.<name>] table: the kinds of mail a person can tell
#: apart (and turn off, where C{unsubscribable})
KIND_SCHEMA: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "description": (_string, ""),
    "unsubscribable": (_boolean, True),
    "qos": (_string, "default"),
}

#: the kinds every installation has; [kinds.<name>] tables override their
#: keys and may add more kinds
BUILTIN_KINDS: dict[str, dict[str, Any]] = {
    "login": {"description": "Sign-in links you asked for", "unsubscribable": False,
              "qos": "transactional"},
    "transactional": {"description": "Messages about your account and your requests",
                      "unsubscribable": False, "qos": "transactional"},
    "announcement": {"description": "Announcements from the course team",
                     "unsubscribable": True, "qos": "default"},
    "notification": {"description": "Notifications about activity in your groups",
                     "unsubscribable": True, "qos": "notification"},
    "digest": {"description": "The weekly digest of what happened in the course",
               "unsubscribable": True, "qos": "bulk"},
    "group": {"description": "Messages from the members of your groups",
              "unsubscribable": True, "qos": "default"},
}

#: environment variables with the EMAILD_ prefix that are not overrides
_NOT_OVERRIDES = {"EMAILD_CONFIG", "EMAILD_TEST_DATABASE_URL"}


# -- typed result --------------------------------------------------------------


@attrs.frozen
class QoSClass:
    name: str
    priority: int
    max_attempts: int
    #: seconds to wait before attempt 2, 3, …; the last one repeats
    backoff: tuple[float, ...]
    #: recipients per second for this class alone; 0 means only the relay rate
    rate: float

    def delay_after(self, attempts: int) -> float:
        """
        Seconds to wait after C{attempts} failed attempts (1 = the first).
        """
        return self.backoff[min(max(attempts, 1), len(self.backoff)) - 1]


@attrs.frozen
class MailKind:
    """
    A kind of mail (see L{emaild.outbound.kinds}).
    """

    name: str
    #: what a person sees on the preferences and unsubscribe pages
    description: str
    #: whether a person may turn it off; mail of a kind that is not carries
    #: no List-Unsubscribe and is never suppressed by an opt-out
    unsubscribable: bool
    #: the QoS class its mail is queued in unless the caller names one
    qos: str


@attrs.frozen
class Config:
    #: section -> key -> typed value, for every key in SCHEMA
    values: Mapping[str, Mapping[str, Any]]
    qos: Mapping[str, QoSClass]
    #: the file it came from, if any (for messages)
    source: str | None = None
    #: kind name -> L{MailKind}
    kinds: Mapping[str, MailKind] = attrs.field(factory=dict)
    #: [lti13.platforms.<name>] -> L{Lti13Platform}
    lti13_platforms: Mapping[str, "Lti13Platform"] = attrs.field(factory=dict)

    def __getitem__(self, section: str) -> Mapping[str, Any]:
        return self.values[section]

    @property
    def state_dir(self) -> Path:
        return Path(self.values["paths"]["state_dir"]).expanduser().absolute()

    @property
    def from_address(self) -> str:
        return self.values["mail"]["from_address"] or (
            f"noreply@{self.values['smtp']['relay_domain']}"
        )

    def qos_class(self, name: str | None) -> QoSClass:
        """
        The class called C{name}; C{default} for None or a class that has
        since been removed from the configuration (so old rows still send).
        """
        return self.qos.get(name or "default") or self.qos["default"]


def _parse_value(key: str, parser: Callable[[Any], Any], raw: Any) -> Any:
    try:
        return parser(raw)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


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
    platforms_raw = _pop_lti13_platforms(raw, overrides)

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
                values[section][key] = _parse_value(f"{section}.{key}", parser, given[key])
            else:
                values[section][key] = default
    qos: dict[str, QoSClass] = {}
    for name, table in qos_tables.items():
        if not re.match(r"^[a-z0-9][a-z0-9_-]*$", name):
            raise ConfigError(f"qos.{name}", "class names are lower-case letters, digits, '-' and '_'")
        typed = {}
        for key, (parser, default) in QOS_SCHEMA.items():
            typed[key] = _parse_value(f"qos.{name}.{key}", parser, table.get(key, default))
        qos[name] = QoSClass(name=name, **typed)
    kinds: dict[str, MailKind] = {}
    for name, table in kind_tables.items():
        if not re.match(r"^[a-z0-9][a-z0-9_-]*$", name):
            raise ConfigError(f"kinds.{name}", "kind names are lower-case letters, digits, '-' and '_'")
        typed = {}
        for key, (parser, default) in KIND_SCHEMA.items():
            typed[key] = _parse_value(f"kinds.{name}.{key}", parser, table.get(key, default))
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
    platforms = _lti13_platforms(platforms_raw, values["lti"]["consumers"])
    return Config(values=values, qos=qos, source=source, kinds=kinds,
                  lti13_platforms=platforms)


# -- LTI 1.3 platforms ------------------------------------------------------------


@attrs.frozen
class Lti13Platform:
    """
    One C{[lti13.platforms.<name>]} table: an LMS we are registered with as
    an LTI 1.3 tool.
    """

    name: str
    #: the C{iss} of its id_tokens, exactly
    issuer: str
    #: the client_id it gave our registration
    client_id: str
    #: its OIDC authorization endpoint (where /lti/login redirects)
    auth_login_url: str
    #: its OAuth 2.0 token endpoint (for NRPS)
    auth_token_url: str
    #: its JWKS (the keys its id_tokens are signed with)
    key_set_url: str
    deployment_ids: tuple[str, ...]
    #: an [lti.consumers] key whose courses this platform's launches go to
    #: (a course moved from LTI 1.1 keeps its row); '' for its own courses
    lti11_consumer_key: str = ""

    @property
    def course_key(self) -> str:
        """
        The C{courses.consumer_key} of this platform's courses.
        """
        return self.lti11_consumer_key or f"lti13:{self.name}"


_PLATFORM_KEYS = ("issuer", "client_id", "auth_login_url", "auth_token_url", "key_set_url",
                  "deployment_ids", "lti11_consumer_key")


def _exact_url(value: Any) -> str:
    value = _string(value).strip()
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _non_empty(value: Any) -> str:
    value = _string(value).strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _deployment_ids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"expected a non-empty list of deployment ids such as ['1'], got {value!r}")
    ids = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"every deployment id must be a non-empty string, got {item!r}")
        ids.append(item.strip())
    return tuple(dict.fromkeys(ids))


def _pop_lti13_platforms(raw: dict, overrides) -> dict:
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


def _lti13_platforms(raw: Mapping[str, Any], consumers: Mapping[str, str]) -> dict:
    parsers = {"issuer": _exact_url, "client_id": _non_empty, "auth_login_url": _exact_url,
               "auth_token_url": _exact_url, "key_set_url": _exact_url,
               "deployment_ids": _deployment_ids, "lti11_consumer_key": _string}
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
            typed[key] = _parse_value(f"{where}.{key}", parsers[key], table[key])
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
