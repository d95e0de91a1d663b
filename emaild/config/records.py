"""
The typed configuration: L{Config} and the records it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import attrs


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
