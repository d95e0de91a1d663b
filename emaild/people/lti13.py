"""
LTI 1.3 launches (1EdTech LTI Core 1.3 and Security Framework 1.0): the
OIDC third-party login and the id_token the platform posts back.

    /lti/login   L{Lti13.login}: find the platform by C{iss} (and
                 C{client_id}), make a state and a nonce (kept in
                 PostgreSQL, used once, C{[lti13] state_ttl}), and send the
                 browser to the platform's C{auth_login_url}.
    /lti/launch  L{Lti13.verify}: use the state up, check the id_token
                 (RS256 only, against the platform's JWKS) and its claims,
                 and return the L{Launch13}.

The JWT header's C{alg} is checked to be C{RS256} before anything else, the
key is built from the JWK as an RSA public key object, and PyJWT is called
with C{algorithms=["RS256"]}: C{none}, HMAC with the public key as secret
(key confusion) and every other algorithm are refused.

Why PyJWT and not PyLTI1p3: PyLTI1p3 is synchronous and requests-based
(it would block the reactor on every JWKS fetch) and has had no release
since 2022; PyJWT plus our own claim checks is smaller than adapting it.

The browser must be the one that began the login (else a stranger's
id_token could sign a learner in as the stranger).  Where the platform
offers the LTI client-side postMessage storage (C{lti_storage_target} on
the login), the login page stores a secret in the platform's frame and the
launch page reads it back (L{Lti13.confirm}); otherwise the secret is a
cookie (C{SameSite=None; Secure; Partitioned} over https).  Either way the
state in PostgreSQL is what decides; the secret only binds it to a browser.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import urllib.parse

import attrs
import jwt
from twisted.logger import Logger

from emaild.outbound.compose import ComposeError, check_address
from emaild.people.lti13_jwks import JwksCache, JwksError
from emaild.people.lti13_keys import ToolKeys
from emaild.people.lti13_nrps import Rosters
from emaild.people.lti13_states import LoginStates, NewLogin, StateProblem

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

LAUNCH_PATH = "/lti/launch"
#: the longest id_token we read
MAX_TOKEN = 64 * 1024
MAX_GROUP_NAME = 200
_STORAGE_TARGET = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


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
class LoginRedirect:
    #: where to send the browser (the platform's auth_login_url with our parameters)
    url: str
    platform: str
    #: what the browser keeps: a cookie, or (with storage_target) the platform's storage
    state: str
    browser_value: str
    storage_target: str | None
    #: the origin postMessages to the platform are addressed to
    platform_origin: str


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


@attrs.frozen
class Verified:
    launch: Launch13
    #: the launch waits for the browser's storage check (L{Lti13.confirm})
    storage_target: str | None
    platform_origin: str


def origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _short(value, limit: int = 80) -> str:
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _clean(value) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


def _b64url_json(part: str, what: str) -> dict:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Lti13Refused(400, f"The id_token's {what} is not base64url-encoded JSON.") from None
    if not isinstance(value, dict):
        raise Lti13Refused(400, f"The id_token's {what} is not a JSON object.")
    return value


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


class Lti13:
    def __init__(self, reactor, config, db, jwks: JwksCache | None = None):
        self.config = config
        self.platforms = dict(config.lti13_platforms)
        lti13 = config["lti13"]
        self.leeway = lti13["leeway"]
        self.consumers = dict(config["lti"]["consumers"])
        self.group_parameter = config["lti"]["group_parameter"]
        self.public_url = config["http"]["public_url"].rstrip("/")
        self.launch_url = self.public_url + LAUNCH_PATH
        self.states = LoginStates(db, lti13["state_ttl"])
        self.jwks = jwks or JwksCache(reactor, timeout=lti13["jwks_timeout"])
        #: our signing keys (made on first start; see L{ToolKeys})
        self.keys = ToolKeys(config.state_dir / "lti" / "keys")
        #: course rosters (NRPS), synced when launches offer them
        self.rosters = Rosters(reactor, config, db, self.keys)

    # -- login ---------------------------------------------------------------
    def _platform_for(self, issuer: str, client_id: str):
        found = [p for p in self.platforms.values() if p.issuer == issuer]
        if not found:
            raise Lti13Refused(400, f"Unknown platform: the issuer {_short(issuer)} is not one "
                                    "of the LTI 1.3 platforms configured here.")
        if client_id:
            found = [p for p in found if p.client_id == client_id]
            if not found:
                raise Lti13Refused(400, f"Unknown client_id {_short(client_id)} for the "
                                        f"platform {_short(issuer)}.")
        elif len(found) > 1:
            raise Lti13Refused(400, f"Several registrations exist for the platform "
                                    f"{_short(issuer)}; the login must name its client_id.")
        return found[0]

    def _on_our_site(self, url: str) -> bool:
        ours = urllib.parse.urlsplit(self.public_url)
        theirs = urllib.parse.urlsplit(url)
        prefix = ours.path.rstrip("/")
        return ((theirs.scheme, theirs.netloc.lower()) == (ours.scheme, ours.netloc.lower())
                and (theirs.path == prefix or theirs.path.startswith(prefix + "/")))

    async def login(self, params: dict[str, str]) -> LoginRedirect:
        """
        Answer an OIDC third-party login initiation.

        @param params: the request's parameters (query or form), as text.
        @raise Lti13Refused: (400) a parameter is missing or wrong.
        """
        for name in ("iss", "login_hint", "target_link_uri"):
            if not params.get(name, "").strip():
                raise Lti13Refused(400, f"The login is missing the required parameter {name}.")
        platform = self._platform_for(params["iss"], params.get("client_id", ""))
        if not self._on_our_site(params["target_link_uri"]):
            raise Lti13Refused(400, f"The target_link_uri {_short(params['target_link_uri'])} "
                                    f"is not on this site ({self.public_url}).", platform.name)
        deployment = params.get("lti_deployment_id", "")
        if deployment and deployment not in platform.deployment_ids:
            raise Lti13Refused(400, f"Unknown deployment {_short(deployment)} for the platform "
                                    f"{platform.name}.", platform.name)
        target = params.get("lti_storage_target", "") or None
        if target is not None and not _STORAGE_TARGET.match(target):
            raise Lti13Refused(400, f"The lti_storage_target {_short(target)} is not a frame "
                                    "name.", platform.name)
        new = NewLogin.make()
        await self.states.create(new, platform.name, target)
        query = {"scope": "openid", "response_type": "id_token", "response_mode": "form_post",
                 "prompt": "none", "client_id": platform.client_id,
                 "redirect_uri": self.launch_url, "login_hint": params["login_hint"],
                 "state": new.state, "nonce": new.nonce}
        if params.get("lti_message_hint"):
            query["lti_message_hint"] = params["lti_message_hint"]
        separator = "&" if urllib.parse.urlsplit(platform.auth_login_url).query else "?"
        return LoginRedirect(platform.auth_login_url + separator + urllib.parse.urlencode(query),
                             platform.name, new.state, new.browser_value, target,
                             origin_of(platform.auth_login_url))

    # -- launch --------------------------------------------------------------
    async def verify(self, id_token: str, state: str, browser_value: str | None) -> Verified:
        """
        Check an id_token posted to the launch URL.

        @param browser_value: the state cookie the browser sent, if any.
        @raise Lti13Refused: saying why.
        """
        if not state:
            raise Lti13Refused(400, "The launch has an id_token but no state.")
        if not id_token:
            raise Lti13Refused(400, "The launch has a state but no id_token.")
        if len(id_token) > MAX_TOKEN:
            raise Lti13Refused(400, f"The id_token is longer than {MAX_TOKEN} characters.")
        try:
            login = await self.states.consume(state)
        except StateProblem as problem:
            raise Lti13Refused(401, {
                "unknown": "The launch's state is unknown here: it was not made by our login "
                           "page. Launch again from your course.",
                "used": "The launch's state was already used: a replayed launch. Launch again "
                        "from your course.",
                "expired": "The launch's state has expired: the login took too long. Launch "
                           "again from your course.",
            }[problem.reason]) from None
        platform = self.platforms.get(login.platform)
        if platform is None:
            raise Lti13Refused(401, f"The platform {login.platform!r} of this login is no longer "
                                    "configured here.")
        if login.storage_target is None and not (browser_value and hmac.compare_digest(
                hashlib.sha256(browser_value.encode("utf-8")).hexdigest(), login.browser_hash)):
            raise Lti13Refused(401, "This browser did not begin this login (its state cookie "
                                    "is missing or wrong). If your browser blocks cookies "
                                    "for this site, open the tool in a new window.",
                               platform.name)
        claims = await self._check_token(id_token, platform)
        if not hmac.compare_digest(str(claims.get("nonce", "")), login.nonce):
            raise Lti13Refused(401, "The id_token's nonce is not the one sent with this login's "
                                    "state: a token from another login.", platform.name)
        if not await self.states.use_nonce(platform.issuer, login.nonce):
            raise Lti13Refused(401, "The id_token's nonce was used before: a replayed token.",
                               platform.name)
        launch = self._launch(claims, platform)
        return Verified(launch, login.storage_target, origin_of(platform.auth_login_url))

    async def hold(self, state: str, launch: Launch13) -> None:
        await self.states.hold(state, launch.to_json())

    async def confirm(self, state: str, browser_value: str) -> Launch13:
        """
        The launch held for the storage check, given the value the
        platform's storage gave back.

        @raise Lti13Refused: no such launch waiting, or the wrong value.
        """
        held = await self.states.confirm(state, browser_value)
        if held is None:
            raise Lti13Refused(401, "This launch is not waiting for this browser: its state is "
                                    "unknown, expired or already signed in, or the platform's "
                                    "storage did not hold this login. Launch again.")
        return Launch13.from_json(held)

    async def _check_token(self, token: str, platform) -> dict:
        parts = token.split(".")
        if len(parts) != 3:
            raise Lti13Refused(400, "The id_token is not a signed JWT (three dot-separated "
                                    "parts).", platform.name)
        header = _b64url_json(parts[0], "header")
        alg = header.get("alg")
        if alg != "RS256":
            raise Lti13Refused(401, f"The id_token is signed with {_short(alg)}; only RS256 is "
                                    "accepted.", platform.name)
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Lti13Refused(401, "The id_token's header names no key (kid).", platform.name)
        try:
            key = await self.jwks.key(platform.key_set_url, kid)
        except JwksError as e:
            raise Lti13Refused(401, f"The id_token cannot be checked: {e}.", platform.name) \
                from None
        try:
            claims = jwt.decode(
                token, key=key, algorithms=["RS256"], audience=platform.client_id,
                issuer=platform.issuer, leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "nonce"]})
        except jwt.InvalidSignatureError:
            raise Lti13Refused(401, "Bad id_token signature: it was not signed by the "
                                    f"platform's key {_short(kid)}.", platform.name) from None
        except jwt.ExpiredSignatureError:
            raise Lti13Refused(401, "The id_token has expired (its exp is past). Launch again, "
                                    "and check the platform's clock.", platform.name) from None
        except jwt.ImmatureSignatureError:
            raise Lti13Refused(401, "The id_token was issued in the future (its iat). Check the "
                                    "platform's clock.", platform.name) from None
        except jwt.InvalidIssuerError:
            raise Lti13Refused(401, f"Wrong issuer: the id_token's iss is not "
                                    f"{_short(platform.issuer)}.", platform.name) from None
        except jwt.InvalidAudienceError:
            raise Lti13Refused(401, f"Wrong audience: the id_token's aud does not contain our "
                                    f"client_id {_short(platform.client_id)}.",
                               platform.name) from None
        except jwt.MissingRequiredClaimError as e:
            raise Lti13Refused(400, f"The id_token is missing the required claim {e.claim}.",
                               platform.name) from None
        except jwt.InvalidTokenError as e:
            raise Lti13Refused(400, f"The id_token is not valid: {_short(str(e), 200)}.",
                               platform.name) from None
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and "azp" not in claims:
            raise Lti13Refused(401, "The id_token has several audiences but no azp.",
                               platform.name)
        if "azp" in claims and claims["azp"] != platform.client_id:
            raise Lti13Refused(401, f"Wrong authorized party: the id_token's azp is not our "
                                    f"client_id {_short(platform.client_id)}.", platform.name)
        return claims

    def _launch(self, claims: dict, platform) -> Launch13:
        name = platform.name
        deployment = claims.get(DEPLOYMENT_ID)
        if not isinstance(deployment, str) or not deployment:
            raise Lti13Refused(400, f"The id_token is missing the required claim {DEPLOYMENT_ID}.",
                               name)
        if deployment not in platform.deployment_ids:
            raise Lti13Refused(401, f"Unknown deployment {_short(deployment)}: it is not one of "
                                    f"the deployment_ids configured for {name}.", name)
        if claims.get(MESSAGE_TYPE) != "LtiResourceLinkRequest":
            raise Lti13Refused(400, f"Unsupported message_type {_short(claims.get(MESSAGE_TYPE))}:"
                                    " only LtiResourceLinkRequest is accepted here.", name)
        if claims.get(VERSION) != "1.3.0":
            raise Lti13Refused(400, f"Unsupported LTI version {_short(claims.get(VERSION))}: "
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
        wanted = self.group_parameter
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
            lti11_identity=self._lti11_identity(claims, platform),
            memberships_url=memberships if isinstance(memberships, str) else None)

    def _lti11_identity(self, claims: dict, platform) -> tuple[str, str] | None:
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
        secret = self.consumers.get(key)
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
