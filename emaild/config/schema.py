"""
Every key of the configuration, declared once: section -> key -> (parser,
default); the QoS classes' and mail kinds' keys and the built-in classes
and kinds.
"""

from __future__ import annotations

from typing import Any, Callable

from emaild.config.values import (
    address,
    addresses,
    api_tokens,
    boolean,
    choice,
    consumers,
    dns_servers,
    domain,
    durations,
    endpoint,
    hour,
    integer,
    local_part,
    message_size,
    number,
    optional_domain,
    origins,
    parse_duration,
    parse_size,
    positive_duration,
    string,
    url,
    weekday,
)

#: section -> key -> (parser, default).  A default of None means "no value".
SCHEMA: dict[str, dict[str, tuple[Callable[[Any], Any], Any]]] = {
    "paths": {
        "state_dir": (string, "./var"),
    },
    "database": {
        "url": (string, ""),
        "pool_size": (integer(1), 4),
        "prepared_statements": (boolean, True),
    },
    "http": {
        "endpoint": (endpoint, "tcp:8080:interface=127.0.0.1"),
        "public_url": (url, "http://127.0.0.1:8080"),
    },
    "smtp": {
        "endpoint": (endpoint, "tcp:2525:interface=127.0.0.1"),
        "relay_domain": (domain, "localhost"),
        "hostname": (optional_domain, ""),
        "max_sessions": (integer(1), 40),
        "max_message_size": (message_size, 10 * 1024 * 1024),
        "max_recipients": (integer(1), 100),
        "idle_timeout": (parse_duration, 300.0),
        "max_commands": (integer(1), 1000),
        "max_errors": (integer(1), 20),
        "max_sessions_per_client": (integer(1), 5),
        "max_connections_per_minute": (integer(1), 60),
        "command_timeout": (parse_duration, 300.0),
        "data_timeout": (parse_duration, 600.0),
        "tls_certificate": (string, ""),
        "tls_key": (string, ""),
        # in-flow control (emaild/inbound/inflow.py): rows waiting for the
        # relay processor above which new mail is delayed, the longest
        # delay, and the rows above which it gets 451 (0: never)
        "in_flow_backlog": (integer(0), 2000),
        "in_flow_delay": (parse_duration, 1.0),
        "in_flow_refuse": (integer(0), 20000),
    },
    "mail": {
        "from_address": (address, ""),
        "from_name": (string, "emaild"),
    },
    "relay": {
        "transport": (choice("maildir", "smtp"), "maildir"),
        "host": (string, "localhost"),
        "port": (integer(1), 587),
        "tls": (choice("starttls", "implicit", "none"), "starttls"),
        "username": (string, ""),
        "password": (string, ""),
        "ca_file": (string, ""),
        "helo_name": (string, ""),
        "rate": (number(positive=True), 14.0),
        "burst": (number(positive=True), None),  # None: half of rate, at least 1
        "daily_quota": (integer(0), 0),
        "connections": (integer(1), 4),
        "connect_timeout": (parse_duration, 30.0),
        "reply_timeout": (parse_duration, 60.0),
        "lease": (parse_duration, 300.0),
        "shutdown_grace": (parse_duration, 10.0),
        "poll_interval": (parse_duration, 10.0),
    },
    "templates": {
        "dir": (string, ""),
    },
    "web": {
        "session_idle": (parse_duration, 8 * 3600.0),
        "session_max": (parse_duration, 30 * 86400.0),
        "allowed_origins": (origins, ()),
        "lms_origins": (origins, ()),
        "fresh_link_limit": (integer(1), 3),
        "fresh_link_window": (parse_duration, 3600.0),
    },
    "links": {
        "salt": (string, "emaild links"),
        "login_ttl": (parse_duration, 30 * 86400.0),
        "unsubscribe_ttl": (parse_duration, 365 * 86400.0),
        # "Did you send this?" links for held group posts
        "hold_ttl": (parse_duration, 7 * 86400.0),
    },
    "groups": {
        "address_prefix": (local_part, "group"),
        "address_salt": (string, ""),
        "hard_bounce_limit": (integer(1), 3),
        "max_posts_per_hour": (integer(0), 30),
        # what happens to a member's post that their domain does not vouch
        # for (no aligned SPF or DKIM pass) and whose DMARC policy is not
        # reject/quarantine (see emaild.inbound.auth)
        "unauthenticated": (choice("hold", "refuse", "relay"), "hold"),
    },
    "dns": {
        "servers": (dns_servers, ()),
        "timeout": (positive_duration, 5.0),
    },
    "lti": {
        "consumers": (consumers, {}),
        "group_parameter": (string, "custom_group"),
        "timestamp_window": (parse_duration, 300.0),
        # LTI requests (login and launch, 1.1 and 1.3) per client address
        # (emaild.web.lti_limits): per second, 0 for no limit; and the burst
        "client_rate": (number(), 5.0),
        "client_burst": (number(positive=True), 300.0),
    },
    "api": {
        "tokens": (api_tokens, ()),
        "max_body": (parse_size, 1024 * 1024),
    },
    "notifications": {
        "online_window": (parse_duration, 300.0),
        "active_window": (parse_duration, 3600.0),
        "daily_limit": (integer(0), 3),
    },
    "admin": {
        "addresses": (addresses, ()),
        "report_interval": (parse_duration, 3600.0),
    },
    "lti13": {
        "state_ttl": (parse_duration, 600.0),
        "leeway": (parse_duration, 60.0),
        "jwks_timeout": (parse_duration, 10.0),
        "nrps_interval": (parse_duration, 86400.0),
    },
    "digest": {
        "enabled": (boolean, True),
        "weekday": (weekday, "monday"),
        "hour": (hour, 8),
        "chunk_size": (integer(1), 500),
    },
}

#: keys of each [qos.<name>] table
QOS_SCHEMA: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "priority": (integer(0), 50),
    "max_attempts": (integer(1), 8),
    "backoff": (durations, ["30s", "2m", "10m", "1h"]),
    "rate": (number(), 0.0),
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
    "description": (string, ""),
    "unsubscribable": (boolean, True),
    "qos": (string, "default"),
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

