"""
LTI 1.3 launches (1EdTech LTI Core 1.3 and Security Framework 1.0): the
OIDC third-party login and the id_token the platform posts back.

    /lti/login   L{Lti13.login}: find the platform by C{iss} (and
                 C{client_id}), make a state and a nonce (kept in
                 PostgreSQL, used once, C{[lti13] state_ttl}), and send the
                 browser to the platform's C{auth_login_url}.
    /lti/launch  L{Lti13.verify}: check the id_token (RS256 only, against
                 the platform's JWKS) and its claims
                 (L{emaild.people.lti13_claims}), and return the L{Launch13}
                 with the L{LoginProof} that the sign-in transaction uses the
                 state up with (L{Lti13.use_login_txn}: state, nonce, person
                 and session in one commit).

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

With the cookie, the platform whose keys check the id_token is the one its
C{iss} (and, for one issuer registered twice, C{azp} or C{aud}) names; the
state is then used up only for that platform, that browser and the
token's nonce, so a token of one platform cannot use another's login.
Without it (postMessage storage), the state is used up first and names the
platform.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import urllib.parse

import attrs
import jwt
from twisted.logger import Logger

from emaild.people.lti13_claims import Launch13, Lti13Refused, read_launch, short
from emaild.people.lti13_jwks import JwksCache, JwksError
from emaild.people.lti13_keys import ToolKeys
from emaild.people.lti13_nrps import Rosters
from emaild.people.lti13_states import LoginProof, LoginStates, NewLogin, StateProblem
from emaild.people.lti13_store import identity_lock

log = Logger()

LAUNCH_PATH = "/lti/launch"
#: the longest id_token we read
MAX_TOKEN = 64 * 1024
_STORAGE_TARGET = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


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
class Verified:
    launch: Launch13
    #: the launch waits for the browser's storage check (L{Lti13.confirm})
    storage_target: str | None
    platform_origin: str
    #: for the sign-in transaction (L{Lti13.use_login_txn}); None when the
    #: state was used up already (the storage check)
    proof: LoginProof | None = None


#: why a login state cannot be used (L{StateProblem.reason}) -> the refusal
STATE_REFUSALS = {
    "unknown": "The launch's state is unknown here: it was not made by our login page. "
               "Launch again from your course.",
    "used": "The launch's state was already used: a replayed launch. Launch again from your "
            "course.",
    "expired": "The launch's state has expired: the login took too long. Launch again from "
               "your course.",
    "browser": "This browser did not begin this login (its state cookie is missing or "
               "wrong). If your browser blocks cookies for this site, open the tool in a new "
               "window.",
    "platform": "The launch's state was made for a login with another platform than the "
                "one that signed its id_token.",
    "nonce": "The id_token's nonce is not the one sent with this login's state: a token "
             "from another login.",
    "replayed": "The id_token's nonce was used before: a replayed token.",
}


def origin_of(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _b64url_json(part: str, what: str) -> dict:
    try:
        raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Lti13Refused(400, f"The id_token's {what} is not base64url-encoded JSON.") from None
    if not isinstance(value, dict):
        raise Lti13Refused(400, f"The id_token's {what} is not a JSON object.")
    return value


class Lti13:
    def __init__(self, config, *, states: LoginStates, jwks: JwksCache, keys: ToolKeys,
                 rosters: Rosters):
        self.config = config
        self.platforms = dict(config.lti13_platforms)
        lti13 = config["lti13"]
        self.leeway = lti13["leeway"]
        self.consumers = dict(config["lti"]["consumers"])
        self.group_parameter = config["lti"]["group_parameter"]
        self.public_url = config["http"]["public_url"].rstrip("/")
        self.launch_url = self.public_url + LAUNCH_PATH
        self.states = states
        self.jwks = jwks
        #: our signing keys (made on first start; see L{ToolKeys})
        self.keys = keys
        #: course rosters (NRPS), synced when launches offer them
        self.rosters = rosters

    # -- login ---------------------------------------------------------------
    def _platform_for(self, issuer: str, client_id: str):
        found = [p for p in self.platforms.values() if p.issuer == issuer]
        if not found:
            raise Lti13Refused(400, f"Unknown platform: the issuer {short(issuer)} is not one "
                                    "of the LTI 1.3 platforms configured here.")
        if client_id:
            found = [p for p in found if p.client_id == client_id]
            if not found:
                raise Lti13Refused(400, f"Unknown client_id {short(client_id)} for the "
                                        f"platform {short(issuer)}.")
        elif len(found) > 1:
            raise Lti13Refused(400, f"Several registrations exist for the platform "
                                    f"{short(issuer)}; the login must name its client_id.")
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
            raise Lti13Refused(400, f"The target_link_uri {short(params['target_link_uri'])} "
                                    f"is not on this site ({self.public_url}).", platform.name)
        deployment = params.get("lti_deployment_id", "")
        if deployment and deployment not in platform.deployment_ids:
            raise Lti13Refused(400, f"Unknown deployment {short(deployment)} for the platform "
                                    f"{platform.name}.", platform.name)
        target = params.get("lti_storage_target", "") or None
        if target is not None and not _STORAGE_TARGET.match(target):
            raise Lti13Refused(400, f"The lti_storage_target {short(target)} is not a frame "
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
        if not browser_value:
            return await self._verify_for_storage(id_token, state)
        platform = self._platform_of_token(id_token)
        claims = await self._check_token(id_token, platform)
        nonce = claims["nonce"]
        if not isinstance(nonce, str) or not nonce:
            raise Lti13Refused(400, "The id_token's nonce is not a string.", platform.name)
        launch = read_launch(claims, platform, self.group_parameter, self.consumers)
        proof = LoginProof(state, browser_value, platform.name, platform.issuer, nonce,
                           identity_lock(launch.issuer, launch.sub))
        return Verified(launch, None, origin_of(platform.auth_login_url), proof)

    async def use_login_txn(self, cursor, proof: LoginProof) -> None:
        """
        In the sign-in transaction: use up the login state, record the
        nonce and take the identity's lock (L{LoginStates.use_txn}).

        @raise Lti13Refused: the state cannot be used (the transaction
            rolls back).
        """
        try:
            await self.states.use_txn(cursor, proof)
        except StateProblem as problem:
            raise Lti13Refused(401, STATE_REFUSALS[problem.reason], proof.platform) from None

    async def _verify_for_storage(self, id_token: str, state: str) -> Verified:
        """
        A launch without the state cookie: its state must be one that the
        platform's storage will check (L{confirm}).  The state is used up
        and the nonce recorded now; the launch is then held (L{hold}).
        """
        try:
            login = await self.states.consume(state)
        except StateProblem as problem:
            raise Lti13Refused(401, STATE_REFUSALS[problem.reason]) from None
        platform = self.platforms.get(login.platform)
        if platform is None:
            raise Lti13Refused(401, f"The platform {login.platform!r} of this login is no longer "
                                    "configured here.")
        if login.storage_target is None:
            raise Lti13Refused(401, STATE_REFUSALS["browser"], platform.name)
        claims = await self._check_token(id_token, platform)
        if not hmac.compare_digest(str(claims.get("nonce", "")), login.nonce):
            raise Lti13Refused(401, STATE_REFUSALS["nonce"], platform.name)
        if not await self.states.use_nonce(platform.issuer, login.nonce):
            raise Lti13Refused(401, STATE_REFUSALS["replayed"], platform.name)
        launch = read_launch(claims, platform, self.group_parameter, self.consumers)
        return Verified(launch, login.storage_target, origin_of(platform.auth_login_url))

    def _platform_of_token(self, token: str):
        """
        The configured platform that an id_token says it is from (before
        its signature is checked: this only picks the keys, issuer and
        client_id it is then checked against).
        """
        parts = token.split(".")
        if len(parts) != 3:
            raise Lti13Refused(400, "The id_token is not a signed JWT (three dot-separated "
                                    "parts).")
        claims = _b64url_json(parts[1], "payload")
        issuer = claims.get("iss")
        found = [p for p in self.platforms.values() if p.issuer == issuer]
        if not found:
            raise Lti13Refused(401, f"Wrong issuer: the id_token's iss {short(issuer)} is not "
                                    "one of the LTI 1.3 platforms configured here.")
        if len(found) == 1:
            return found[0]
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        chosen = ([p for p in found if p.client_id == claims.get("azp")]
                  or [p for p in found if p.client_id in audiences])
        if not chosen:
            raise Lti13Refused(401, f"Wrong audience: the id_token's aud names none of the "
                                    f"client_ids registered for the platform {short(issuer)}.")
        return chosen[0]

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
            raise Lti13Refused(401, f"The id_token is signed with {short(alg)}; only RS256 is "
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
                                    f"platform's key {short(kid)}.", platform.name) from None
        except jwt.ExpiredSignatureError:
            raise Lti13Refused(401, "The id_token has expired (its exp is past). Launch again, "
                                    "and check the platform's clock.", platform.name) from None
        except jwt.ImmatureSignatureError:
            raise Lti13Refused(401, "The id_token was issued in the future (its iat). Check the "
                                    "platform's clock.", platform.name) from None
        except jwt.InvalidIssuerError:
            raise Lti13Refused(401, f"Wrong issuer: the id_token's iss is not "
                                    f"{short(platform.issuer)}.", platform.name) from None
        except jwt.InvalidAudienceError:
            raise Lti13Refused(401, f"Wrong audience: the id_token's aud does not contain our "
                                    f"client_id {short(platform.client_id)}.",
                               platform.name) from None
        except jwt.MissingRequiredClaimError as e:
            raise Lti13Refused(400, f"The id_token is missing the required claim {e.claim}.",
                               platform.name) from None
        except jwt.InvalidTokenError as e:
            raise Lti13Refused(400, f"The id_token is not valid: {short(str(e), 200)}.",
                               platform.name) from None
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and "azp" not in claims:
            raise Lti13Refused(401, "The id_token has several audiences but no azp.",
                               platform.name)
        if "azp" in claims and claims["azp"] != platform.client_id:
            raise Lti13Refused(401, f"Wrong authorized party: the id_token's azp is not our "
                                    f"client_id {short(platform.client_id)}.", platform.name)
        return claims
