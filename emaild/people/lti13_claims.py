"""
What a verified LTI 1.3 id_token says (1EdTech LTI Core 1.3 claims): the
L{Launch13} a resource link launch makes, with the checks on its claims,
and the LTI 1.1 migration claim (1EdTech LTI 1.3 Migration Guide).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import attrs
from twisted.logger import Logger

from emaild.outbound.compose import ComposeError, check_address

log = Logger()

CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
MESSAGE_TYPE = CLAIM + "message_type"
VERSION = CLAIM + "version"
DEPLOYMENT_ID = CLAIM + "deployment_id"
RESOURCE_LINK = CLAIM + "resource_link"
ROLES = CLAIM + "roles"
CONTEXT = CLAIM + "context"
CUSTOM = CLAIM + "custom"
LTI1P1 = CLAIM + "lti1p1"
NRPS = "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"

MAX_GROUP_NAME = 200


class Lti13Refused(Exception):
    """
    The login or launch is refused with HTTP C{status}; C{message} says why
    (for the page and the log; it never contains the token).
    """

    def __init__(self, status: int, message: str, platform: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.platform = platform


@attrs.frozen
class Launch13:
    """
    A verified LTI 1.3 resource link launch.
    """

    platform: str
    issuer: str
    sub: str
    email: str | None
    rejected_email: str | None
    display_name: str
    roles: tuple[str, ...]
    context_id: str | None
    context_title: str
    group: str | None
    resource_link_id: str
    deployment_id: str
    #: (oauth_consumer_key, user_id) of a checked lti1p1 claim, else None
    lti11_identity: tuple[str, str] | None
    #: the NRPS context_memberships_url, when the launch offers the service
    memberships_url: str | None

    def to_json(self) -> dict:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Launch13:
        data = dict(data)
        data["roles"] = tuple(data["roles"])
        if data.get("lti11_identity") is not None:
            data["lti11_identity"] = tuple(data["lti11_identity"])
        return cls(**data)


def short(value, limit: int = 80) -> str:
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _clean(value) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


def migration_sign(consumer_key: str, deployment_id: str, issuer: str, client_id: str,
                   exp, nonce: str, secret: str) -> str:
    """
    The C{oauth_consumer_key_sign} of the LTI 1.1 migration claim (1EdTech
    LTI 1.3 Migration Guide): base64 of the HMAC-SHA256, keyed with the LTI
    1.1 consumer's secret, of C{key&deployment_id&iss&client_id&exp&nonce}.
    """
    base = "&".join((consumer_key, deployment_id, issuer, client_id, str(exp), nonce))
    mac = hmac.new(secret.encode("utf-8"), base.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def read_launch(claims: dict, platform, group_parameter: str,
                consumers: dict[str, str]) -> Launch13:
    """
    The L{Launch13} of a verified id_token's claims.

    @raise Lti13Refused: a required claim is missing or wrong.
    """
    name = platform.name
    deployment = claims.get(DEPLOYMENT_ID)
    if not isinstance(deployment, str) or not deployment:
        raise Lti13Refused(400, f"The id_token is missing the required claim {DEPLOYMENT_ID}.",
                           name)
    if deployment not in platform.deployment_ids:
        raise Lti13Refused(401, f"Unknown deployment {short(deployment)}: it is not one of "
                                f"the deployment_ids configured for {name}.", name)
    if claims.get(MESSAGE_TYPE) != "LtiResourceLinkRequest":
        raise Lti13Refused(400, f"Unsupported message_type {short(claims.get(MESSAGE_TYPE))}:"
                                " only LtiResourceLinkRequest is accepted here.", name)
    if claims.get(VERSION) != "1.3.0":
        raise Lti13Refused(400, f"Unsupported LTI version {short(claims.get(VERSION))}: "
                                "only 1.3.0.", name)
    link = claims.get(RESOURCE_LINK)
    if not isinstance(link, dict) or not isinstance(link.get("id"), str) or not link["id"]:
        raise Lti13Refused(400, f"The id_token is missing the required claim "
                                f"{RESOURCE_LINK} (with an id).", name)
    roles = claims.get(ROLES)
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Lti13Refused(400, f"The id_token is missing the required claim {ROLES} "
                                "(a list of role URIs).", name)
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub or len(sub) > 255 or "\0" in sub:
        raise Lti13Refused(400, "The id_token's sub is not a user id (1 to 255 characters).",
                           name)
    email, rejected = None, None
    sent = claims.get("email")
    if isinstance(sent, str) and sent.strip():
        try:
            email = check_address(sent.strip())
        except ComposeError:
            rejected = sent
    display = _clean(claims.get("name")) or _clean(
        " ".join((_clean(claims.get("given_name")), _clean(claims.get("family_name")))))
    context = claims.get(CONTEXT) if isinstance(claims.get(CONTEXT), dict) else {}
    context_id = context.get("id") if isinstance(context.get("id"), str) else None
    custom = claims.get(CUSTOM) if isinstance(claims.get(CUSTOM), dict) else {}
    wanted = group_parameter
    group_value = custom.get(wanted, custom.get(wanted.removeprefix("custom_")))
    group = _clean(group_value) or None
    if group is not None and len(group) > MAX_GROUP_NAME:
        raise Lti13Refused(400, f"The group name in the custom claim {wanted} is longer than "
                                f"{MAX_GROUP_NAME} characters.", name)
    texts = [display, context_id or "", _clean(context.get("title")), group or "",
             link["id"], *roles]
    if any("\0" in t for t in texts):
        raise Lti13Refused(400, "A claim of the id_token contains a NUL character.", name)
    nrps = claims.get(NRPS) if isinstance(claims.get(NRPS), dict) else {}
    memberships = nrps.get("context_memberships_url")
    return Launch13(
        platform=name, issuer=platform.issuer, sub=sub, email=email, rejected_email=rejected,
        display_name=display, roles=tuple(r.strip() for r in roles if r.strip()),
        context_id=(context_id.strip() or None) if context_id else None,
        context_title=_clean(context.get("title")), group=group,
        resource_link_id=link["id"], deployment_id=deployment,
        lti11_identity=lti11_identity(claims, platform, consumers),
        memberships_url=memberships if isinstance(memberships, str) else None)


def lti11_identity(claims: dict, platform, consumers: dict[str, str]) -> tuple[str, str] | None:
    """
    (consumer key, LTI 1.1 user_id) from the lti1p1 migration claim, when
    its oauth_consumer_key_sign checks with that consumer's secret.
    """
    claim = claims.get(LTI1P1)
    if not isinstance(claim, dict):
        return None
    key, user_id, sign = (claim.get("oauth_consumer_key"), claim.get("user_id"),
                          claim.get("oauth_consumer_key_sign"))
    if not all(isinstance(v, str) and v and "\0" not in v and len(v) <= 255
               for v in (key, user_id, sign)):
        log.warn("LTI 1.3 launch: ignoring an incomplete lti1p1 claim [platform {platform}, "
                 "sub {sub!r}]", platform=platform.name, sub=claims.get("sub"))
        return None
    secret = consumers.get(key)
    if secret is None:
        log.warn("LTI 1.3 launch: ignoring the lti1p1 claim: consumer key {key!r} is not "
                 "configured [platform {platform}]", key=key, platform=platform.name)
        return None
    expected = migration_sign(key, claims.get(DEPLOYMENT_ID, ""), claims["iss"],
                              platform.client_id, claims["exp"], claims["nonce"], secret)
    if not hmac.compare_digest(expected.encode("ascii"), sign.encode("utf-8", "replace")):
        log.warn("LTI 1.3 launch: ignoring the lti1p1 claim: its oauth_consumer_key_sign "
                 "does not check with consumer {key!r}'s secret [platform {platform}]",
                 key=key, platform=platform.name)
        return None
    return key, user_id
