"""
An LTI 1.3 platform for tests, written from the 1EdTech specifications
(LTI Core 1.3, Security Framework 1.0, NRPS 2.0, LTI 1.1 Migration Guide),
not with the library under test: its own RSA keys (C{cryptography}), JWTs
built by hand (base64url header and payload, RS256 = RSASSA-PKCS1-v1_5 with
SHA-256), and a Twisted web server on 127.0.0.1 with

    /jwks       its JWK Set (Cache-Control and failures set by the test)
    /auth       the OIDC authorization endpoint: checks the tool's request and
                answers with the auto-submitting form_post of an id_token
    /token      the OAuth 2.0 token endpoint (client credentials + JWT assertion)
    /nrps/<ctx> the NRPS membership container, in pages
    /course     a course page framing the tool, with postMessage storage
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

ISSUER = "https://platform.example.edu"
CLIENT_ID = "emaild-client-1"
DEPLOYMENT_ID = "deployment-1"
CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
LEARNER = "http://purl.imsglobal.org/vocab/lis/v2/membership#Learner"
INSTRUCTOR = "http://purl.imsglobal.org/vocab/lis/v2/membership#Instructor"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_json(value) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def b64url_uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def rs256_jwt(header: dict, payload: dict, key: rsa.RSAPrivateKey) -> str:
    signing_input = f"{b64url_json(header)}.{b64url_json(payload)}".encode("ascii")
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input.decode("ascii") + "." + b64url(signature)


def hs256_jwt(header: dict, payload: dict, secret: bytes) -> str:
    signing_input = f"{b64url_json(header)}.{b64url_json(payload)}".encode("ascii")
    return signing_input.decode("ascii") + "." + b64url(
        hmac.new(secret, signing_input, hashlib.sha256).digest())


def unsigned_jwt(payload: dict) -> str:
    return f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{b64url_json(payload)}."


def decode_part(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def rs256_verify(token: str, public_key) -> dict:
    """
    The payload of an RS256 JWT signed by C{public_key} (raises if not).
    """
    head, body, signature = token.split(".")
    if decode_part(head).get("alg") != "RS256":
        raise ValueError("not RS256")
    public_key.verify(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                      f"{head}.{body}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return decode_part(body)


def migration_sign(key, deployment_id, issuer, client_id, exp, nonce, secret) -> str:
    base = f"{key}&{deployment_id}&{issuer}&{client_id}&{exp}&{nonce}"
    return base64.b64encode(hmac.new(secret.encode(), base.encode(), hashlib.sha256).digest()
                            ).decode("ascii")


class PlatformKey:
    def __init__(self, kid: str, bits: int = 2048):
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=bits)

    def jwk(self) -> dict:
        numbers = self.private.public_key().public_numbers()
        return {"kty": "RSA", "kid": self.kid, "alg": "RS256", "use": "sig",
                "n": b64url_uint(numbers.n), "e": b64url_uint(numbers.e)}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class Platform:
    """
    The emulated LMS.  C{await platform.start()}; C{platform.url(path)}.
    """

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.keys = [PlatformKey("platform-key-1")]
        self.jwks_requests = 0
        self.jwks_cache_control = "max-age=300"
        self.jwks_status = 200
        self.token_requests: list[dict] = []
        self.token_refusal: tuple[int, dict] | None = None
        #: seconds the token endpoint takes to answer
        self.token_delay = 0.0
        self.issued_tokens: set[str] = set()
        #: returns the tool's registered JWK Set (set by the test)
        self.tool_jwks = lambda: {"keys": []}
        self.members: dict[str, list[dict]] = {}
        self.page_size = 100
        self.nrps_requests: list[tuple[str, str]] = []
        #: changes the next id_tokens' claims (None removes one)
        self.claim_changes: dict = {}
        self.user = {"sub": "lti13-user-7", "name": "Grace Hopper", "given_name": "Grace",
                     "family_name": "Hopper", "email": "grace@example.org"}
        self.roles = [LEARNER]
        self.context = {"id": "ctx-physics", "title": "Physics 101",
                        "type": ["http://purl.imsglobal.org/vocab/lis/v2/course#CourseOffering"]}
        self.custom: dict = {}
        self.lti1p1: dict | None = None
        self.nrps_claim = False
        self.port = None

    async def start(self) -> str:
        root = Resource()
        root.putChild(b"jwks", _Jwks(self))
        root.putChild(b"auth", _Auth(self))
        root.putChild(b"token", _Token(self))
        root.putChild(b"nrps", _Nrps(self))
        root.putChild(b"course", _Course(self))
        self.port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        return self.url("")

    def stop(self):
        return self.port.stopListening()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port.getHost().port}{path}"

    def platform_config(self, **changes) -> dict:
        config = {"issuer": ISSUER, "client_id": CLIENT_ID,
                  "auth_login_url": self.url("/auth"), "auth_token_url": self.url("/token"),
                  "key_set_url": self.url("/jwks"), "deployment_ids": [DEPLOYMENT_ID]}
        config.update(changes)
        return config

    # -- id_tokens -------------------------------------------------------------
    def claims(self, nonce: str, **changes) -> dict:
        now = int(time.time())
        claims = {
            "iss": ISSUER, "aud": CLIENT_ID, "iat": now, "exp": now + 300, "nonce": nonce,
            **self.user,
            CLAIM + "deployment_id": DEPLOYMENT_ID,
            CLAIM + "message_type": "LtiResourceLinkRequest",
            CLAIM + "version": "1.3.0",
            CLAIM + "target_link_uri": "https://tool.example/lti/launch",
            CLAIM + "resource_link": {"id": "rl-200", "title": "Course mail"},
            CLAIM + "roles": list(self.roles),
            CLAIM + "context": dict(self.context),
        }
        if self.custom:
            claims[CLAIM + "custom"] = dict(self.custom)
        if self.lti1p1 is not None:
            claims[CLAIM + "lti1p1"] = dict(self.lti1p1)
        if self.nrps_claim:
            claims["https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"] = {
                "context_memberships_url": self.url(f"/nrps/{self.context['id']}"),
                "service_versions": ["2.0"]}
        claims.update(self.claim_changes)
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def id_token(self, nonce: str, key: PlatformKey | None = None, header: dict | None = None,
                 **changes) -> str:
        key = key or self.keys[-1]
        head = {"alg": "RS256", "typ": "JWT", "kid": key.kid, **(header or {})}
        return rs256_jwt(head, self.claims(nonce, **changes), key.private)

    def rotate(self) -> PlatformKey:
        key = PlatformKey(f"platform-key-{len(self.keys) + 1}")
        self.keys.append(key)
        return key


def _form_page(action: str, fields: dict) -> bytes:
    inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in fields.items())
    return (f'<!doctype html><html><body><form id="f" method="post" action="{html.escape(action)}">'
            f'{inputs}</form><script>document.getElementById("f").submit()</script>'
            '</body></html>').encode()


class _Jwks(Resource):
    isLeaf = True

    def __init__(self, platform: Platform):
        super().__init__()
        self.platform = platform

    def render_GET(self, request):
        self.platform.jwks_requests += 1
        request.setResponseCode(self.platform.jwks_status)
        request.setHeader(b"content-type", b"application/json")
        if self.platform.jwks_cache_control:
            request.setHeader(b"cache-control", self.platform.jwks_cache_control.encode())
        return json.dumps({"keys": [k.jwk() for k in self.platform.keys]}).encode()


class _Auth(Resource):
    """
    The OIDC authorization endpoint (LTI Security Framework 5.1.1.2/5.1.1.3).
    """

    isLeaf = True

    def __init__(self, platform: Platform):
        super().__init__()
        self.platform = platform
        self.requests: list[dict] = []

    def render_GET(self, request):
        query = {k.decode(): v[0].decode() for k, v in request.args.items()}
        self.platform.last_auth_request = query
        expected = {"scope": "openid", "response_type": "id_token", "response_mode": "form_post",
                    "prompt": "none", "client_id": CLIENT_ID}
        for name, value in expected.items():
            if query.get(name) != value:
                request.setResponseCode(400)
                return f"bad {name}: {query.get(name)!r}".encode()
        for name in ("redirect_uri", "login_hint", "state", "nonce"):
            if not query.get(name):
                request.setResponseCode(400)
                return f"missing {name}".encode()
        token = self.platform.id_token(query["nonce"])
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return _form_page(query["redirect_uri"], {"id_token": token, "state": query["state"]})


class _Token(Resource):
    isLeaf = True

    def __init__(self, platform: Platform):
        super().__init__()
        self.platform = platform

    def render_POST(self, request):
        if self.platform.token_delay:
            gone = []
            request.notifyFinish().addErrback(gone.append)  # the client went away

            def answer():
                if not gone:
                    request.write(self.answer(request))
                    request.finish()

            reactor.callLater(self.platform.token_delay, answer)
            return NOT_DONE_YET
        return self.answer(request)

    def answer(self, request) -> bytes:
        form = {k.decode(): v[0].decode() for k, v in request.args.items()}
        self.platform.token_requests.append(form)
        request.setHeader(b"content-type", b"application/json")
        if self.platform.token_refusal is not None:
            status, body = self.platform.token_refusal
            request.setResponseCode(status)
            return json.dumps(body).encode()
        problem = self.check(form)
        if problem:
            request.setResponseCode(400)
            return json.dumps({"error": "invalid_grant", "error_description": problem}).encode()
        token = secrets.token_urlsafe(24)
        self.platform.issued_tokens.add(token)
        return json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": 3600,
                           "scope": form["scope"]}).encode()

    def check(self, form: dict) -> str | None:
        if form.get("grant_type") != "client_credentials":
            return "grant_type"
        if form.get("client_assertion_type") != \
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
            return "client_assertion_type"
        assertion = form.get("client_assertion", "")
        kid = decode_part(assertion.split(".")[0]).get("kid")
        # the tool's JWKS, as registered (a test hands it over)
        keys = {k["kid"]: k for k in self.platform.tool_jwks()["keys"]}
        if kid not in keys:
            return "unknown kid"
        jwk = keys[kid]
        public = rsa.RSAPublicNumbers(
            int.from_bytes(base64.urlsafe_b64decode(jwk["e"] + "=="), "big"),
            int.from_bytes(base64.urlsafe_b64decode(jwk["n"] + "=="), "big")).public_key()
        try:
            claims = rs256_verify(assertion, public)
        except Exception:  # noqa: BLE001
            return "bad signature"
        now = time.time()
        if claims.get("iss") != CLIENT_ID or claims.get("sub") != CLIENT_ID:
            return "iss/sub"
        aud = claims.get("aud")
        if self.platform.url("/token") not in (aud if isinstance(aud, list) else [aud]):
            return "aud"
        if not claims.get("jti") or not (now - 60 < claims.get("exp", 0) <= now + 3600):
            return "jti/exp"
        return None


class _Nrps(Resource):
    isLeaf = True

    def __init__(self, platform: Platform):
        super().__init__()
        self.platform = platform

    def render_GET(self, request):
        auth = (request.getHeader(b"authorization") or b"").decode()
        accept = (request.getHeader(b"accept") or b"").decode()
        context = request.postpath[0].decode() if request.postpath else ""
        self.platform.nrps_requests.append((context, accept))
        if not auth.startswith("Bearer ") or auth[7:] not in self.platform.issued_tokens:
            request.setResponseCode(401)
            return b'{"error": "unauthorized"}'
        members = self.platform.members.get(context, [])
        page = int((request.args.get(b"page") or [b"0"])[0])
        size = self.platform.page_size
        chunk = members[page * size:(page + 1) * size]
        request.setHeader(b"content-type",
                          b"application/vnd.ims.lti-nrps.v2.membershipcontainer+json")
        if (page + 1) * size < len(members):
            next_url = self.platform.url(f"/nrps/{context}?page={page + 1}")
            request.setHeader(b"link", f'<{next_url}>; rel="next"'.encode())
        return json.dumps({"id": self.platform.url(f"/nrps/{context}"),
                           "context": {"id": context, "title": "Physics 101"},
                           "members": chunk}).encode()


#: the course page's script: it frames the tool's login URL and answers the
#: tool's LTI postMessage storage requests (lti.capabilities, lti.put_data,
#: lti.get_data), keeping values per requesting origin
COURSE_PAGE = """<!doctype html><html><head><title>Course</title></head><body>
<h1>Course page</h1>
<iframe id="tool" name="tool" src="%(login)s" width="800" height="600"></iframe>
<script>
var store = {};
window.storageLog = [];
window.addEventListener("message", function (event) {
  var m = event.data;
  if (!m || typeof m.subject !== "string") { return; }
  window.storageLog.push(m.subject + " " + (m.key || "") + " from " + event.origin);
  var reply = {message_id: m.message_id, subject: m.subject + ".response"};
  var mine = store[event.origin] = store[event.origin] || {};
  if (m.subject === "lti.capabilities") {
    reply.supported_messages = [{subject: "lti.put_data", frame: "_parent"},
                                {subject: "lti.get_data", frame: "_parent"}];
  } else if (m.subject === "lti.put_data") {
    mine[m.key] = m.value; reply.key = m.key; reply.value = m.value;
  } else if (m.subject === "lti.get_data") {
    reply.key = m.key;
    if (m.key in mine) { reply.value = mine[m.key]; }
    else { reply.error = {code: "bad_request", message: "no such key"}; }
  } else {
    reply.error = {code: "unsupported_subject", message: "unsupported"};
  }
  event.source.postMessage(reply, event.origin);
});
</script></body></html>"""


class _Course(Resource):
    isLeaf = True

    def __init__(self, platform: Platform):
        super().__init__()
        self.platform = platform

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        login = html.escape(self.platform.course_login_url, quote=True)
        return (COURSE_PAGE % {"login": login}).encode("utf-8")
