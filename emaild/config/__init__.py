"""
emaild's configuration: one TOML file, every key with a default, and
environment overrides named C{EMAILD_<SECTION>_<KEY>}.

Every key is declared once in L{SCHEMA} (L{emaild.config.schema}) with its
type and default; the loader (L{emaild.config.loading}) refuses unknown keys
and bad values with a L{ConfigError} naming the key, so a typo stops start-up
instead of silently falling back to a default.  The value parsers are in
L{emaild.config.values}, the typed result in L{emaild.config.records}, the
LTI 1.3 platform tables in L{emaild.config.lti13}.
"""

from __future__ import annotations

from emaild.config.errors import ConfigError
from emaild.config.loading import load_config
from emaild.config.records import Config, Lti13Platform, MailKind, QoSClass
from emaild.config.schema import BUILTIN_KINDS, BUILTIN_QOS, KIND_SCHEMA, QOS_SCHEMA, SCHEMA
from emaild.config.values import parse_duration, parse_size

__all__ = [
    "BUILTIN_KINDS", "BUILTIN_QOS", "KIND_SCHEMA", "QOS_SCHEMA", "SCHEMA", "Config",
    "ConfigError", "Lti13Platform", "MailKind", "QoSClass", "load_config", "parse_duration",
    "parse_size",
]
