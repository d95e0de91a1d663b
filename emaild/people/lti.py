"""
LTI 1.1 basic launches: checking that a launch really comes from a
configured consumer, and reading who it is about.

A launch is an C{application/x-www-form-urlencoded} POST signed with OAuth
1.0a HMAC-SHA1 (the parameters travel in the body).  L{LaunchVerifier}
refuses it with a L{LaunchRefused} that says exactly why:

    400  the body is not a form, or not UTF-8; a required LTI or OAuth
         parameter is missing; an unsupported message type, LTI version,
         OAuth version or signature method; duplicated OAuth parameters
    401  unknown consumer key; timestamp outside +-C{[lti] timestamp_window};
         bad signature (wrong secret, altered parameter, wrong URL);
         nonce already used

(the split follows RFC 5849 section 3.2).  The signature is checked by
oauthlib's L{SignatureOnlyEndpoint}; the checks around it that oauthlib
would only answer with a bare C{False} (which key? how stale?) are done
first here, so each refusal can name its reason.  The nonce is recorded only
after the signature verified, so nobody can burn a consumer's nonces.

The URL that was signed is C{[http] public_url + "/lti/launch"} (plus the
query string as received), never the Host header or the scheme the request
arrived with: behind a TLS-terminating proxy the LMS signed
C{https://public.host/prefix/lti/launch} while we are reached on
C{http://127.0.0.1:8080/lti/launch}.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Callable

import attrs
from oauthlib.oauth1 import RequestValidator, SignatureOnlyEndpoint

from emaild.mailformat.addresses import AddressError, check_address

#: the path of the launch URL under public_url
LAUNCH_PATH = "/lti/launch"

#: LTI parameters a basic launch must have
REQUIRED_LTI = ("lti_message_type", "lti_version", "resource_link_id", "user_id")
#: OAuth parameters a signed request must have (oauth_version is optional)
REQUIRED_OAUTH = ("oauth_consumer_key", "oauth_signature_method", "oauth_timestamp",
                  "oauth_nonce", "oauth_signature")

#: bounds that keep the nonce table and the logs sane
MAX_NONCE = 255
MAX_KEY = 255
#: group names longer than this are refused (400)
MAX_GROUP_NAME = 200
#: delete old nonces at most this often (seconds) per process
NONCE_SWEEP_INTERVAL = 60.0

_FORM = "application/x-www-form-urlencoded"


class LaunchRefused(Exception):
    """
    The launch is refused with HTTP C{status}; C{message} says why (for the
    page and the log), C{consumer_key} is the key it claimed, if any.
    """

    def __init__(self, status: int, message: str, consumer_key: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.consumer_key = consumer_key


@attrs.frozen
class Launch:
    """
    A verified launch: who it is about and where they came from.
    """

    consumer_key: str
    user_id: str
    #: checked address, or None (not sent, or not a usable address)
    email: str | None
    #: the address as sent when it was not usable (for the log), else None
    rejected_email: str | None
    #: '' when the LMS sent no name
    display_name: str
    roles: tuple[str, ...]
    #: None when the launch names no course
    context_id: str | None
    context_title: str
    #: the group named by [lti] group_parameter, or None
    group: str | None
    resource_link_id: str


def _short(value: str, limit: int = 80) -> str:
    """
    A value quoted for a message, cut to C{limit} characters.
    """
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _clean(value: str) -> str:
    """
    One line of text: runs of whitespace (newlines too) become one space.
    """
    return " ".join(value.split())


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """
    The (name, value) pairs of a form body, in order, duplicates kept.

    @raise LaunchRefused: (400) not ASCII or a value is not UTF-8.
    """
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise LaunchRefused(400, "The launch was not sent as a URL-encoded form "
                                 "(it contains raw non-ASCII bytes).") from None
    try:
        params = urllib.parse.parse_qsl(text, keep_blank_values=True,
                                        encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise LaunchRefused(400, "A launch parameter is not valid UTF-8 text.") from None
    except ValueError as e:
        raise LaunchRefused(400, f"The launch form could not be read: {e}.") from None
    for name, value in params:
        if "\0" in name or "\0" in value:
            # PostgreSQL cannot store it, and no real launch has one
            raise LaunchRefused(400, f"The launch parameter {_short(name.replace(chr(0), ''))} "
                                     "contains a NUL character.")
    return params


class _Validator(RequestValidator):
    """
    What oauthlib's endpoint asks of us.  Timestamp, nonce and key format
    were already checked by L{LaunchVerifier} (oauthlib's defaults, e.g.
    20-30 character keys and nonces, refuse what real LMSes send; Moodle's
    nonces are 32 hex digits, consumer keys are often short words).
    """

    allowed_signature_methods = ("HMAC-SHA1",)
    # the URL we verify against is our own public_url; TLS is the proxy's
    enforce_ssl = False
    dummy_client = "emaild-no-such-consumer"

    def __init__(self, consumers: dict[str, str], window: float):
        super().__init__()
        self.consumers = consumers
        self.window = window

    @property
    def timestamp_lifetime(self):
        # ours is checked first with the verifier's clock; oauthlib's own
        # check (time.time()) must not be the stricter one at the boundary
        return int(self.window) + 60

    def check_client_key(self, client_key):
        return 0 < len(client_key) <= MAX_KEY

    def check_nonce(self, nonce):
        return 0 < len(nonce) <= MAX_NONCE

    def validate_client_key(self, client_key, request):
        return client_key in self.consumers

    def get_client_secret(self, client_key, request):
        # the dummy secret keeps the work the same for unknown keys
        return self.consumers.get(client_key, "emaild-dummy-secret-0000")

    def validate_timestamp_and_nonce(self, client_key, timestamp, nonce, request,
                                     request_token=None, access_token=None):
        # checked by LaunchVerifier: the nonce in the database, after the
        # signature, so a forged request cannot use up a nonce
        return True


class NonceStore:
    """
    The C{lti_nonces} table: a (consumer key, nonce) pair may be used once.

    A nonce must be kept as long as a request carrying it could still pass
    the timestamp check: a launch first seen at time t has a timestamp of at
    least t - window, and that timestamp is accepted until at most
    t + 2 x window.  Older rows are deleted, at most every
    L{NONCE_SWEEP_INTERVAL} seconds per process.
    """

    def __init__(self, db, window: float, clock: Callable[[], float] = time.monotonic):
        self.db = db
        self.keep = 2 * window
        self.clock = clock
        self._last_sweep: float | None = None

    async def use(self, consumer_key: str, nonce: str) -> bool:
        """
        Record the nonce; False when it was used before (a replay).
        """
        rows = await self.db.runQuery(
            "INSERT INTO lti_nonces (consumer_key, nonce) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING RETURNING 1", (consumer_key, nonce))
        now = self.clock()
        if self._last_sweep is None or now - self._last_sweep >= NONCE_SWEEP_INTERVAL:
            self._last_sweep = now
            await self.sweep()
        return bool(rows)

    def sweep(self):
        return self.db.runOperation(
            "DELETE FROM lti_nonces WHERE seen_at < now() - make_interval(secs => %s)",
            (self.keep,))


class LaunchVerifier:
    """
    Checks launches against C{[lti]} (consumers, timestamp window, group
    parameter) and C{[http] public_url}.
    """

    def __init__(self, config, nonces: NonceStore, clock: Callable[[], float] = time.time):
        lti = config["lti"]
        self.consumers: dict[str, str] = dict(lti["consumers"])
        self.window: float = lti["timestamp_window"]
        self.group_parameter: str = lti["group_parameter"]
        self.launch_url = config["http"]["public_url"].rstrip("/") + LAUNCH_PATH
        self.nonces = nonces
        self.clock = clock
        self.endpoint = SignatureOnlyEndpoint(_Validator(self.consumers, self.window))

    async def verify(self, method: str, query: bytes, content_type: str | None,
                     body: bytes) -> Launch:
        """
        Check a launch request and return what it says.

        @param query: the raw query string of the request (without C{?}).
        @param content_type: the Content-Type header, if any.
        @raise LaunchRefused: saying why.
        """
        media = (content_type or "").split(";")[0].strip().lower()
        if media != _FORM:
            raise LaunchRefused(400, f"An LTI launch is a form POST ({_FORM}); this request "
                                     f"was sent as {media or 'no content type'}.")
        params = parse_form(body)
        fields: dict[str, str] = {}
        for name, value in params:
            if name in fields and name.startswith("oauth_"):
                raise LaunchRefused(400, f"The OAuth parameter {name} appears more than once.",
                                    fields.get("oauth_consumer_key"))
            fields.setdefault(name, value)
        key = fields.get("oauth_consumer_key") or None

        self._check_lti(fields, key)
        self._check_oauth_form(fields, key)
        if key not in self.consumers:
            raise LaunchRefused(401, f"Unknown consumer key {_short(key)}: it is not one of "
                                     "the LTI consumers configured here.", key)
        self._check_timestamp(fields["oauth_timestamp"], key)
        self._check_signature(method, query, params, key)
        if not await self.nonces.use(key, fields["oauth_nonce"]):
            raise LaunchRefused(401, "This launch was already used (its OAuth nonce was seen "
                                     "before): a replayed request. Launch again from the course.",
                                key)
        return self._launch(fields, key)

    # -- the checks, in order ------------------------------------------------
    @staticmethod
    def _check_lti(fields: dict[str, str], key: str | None) -> None:
        for name in REQUIRED_LTI:
            if not fields.get(name, "").strip():
                raise LaunchRefused(400, f"The launch is missing the required LTI parameter "
                                         f"{name}.", key)
        if fields["lti_message_type"] != "basic-lti-launch-request":
            raise LaunchRefused(400, f"Unsupported lti_message_type "
                                     f"{_short(fields['lti_message_type'])}: only "
                                     "basic-lti-launch-request is accepted here.", key)
        if fields["lti_version"] != "LTI-1p0":
            raise LaunchRefused(400, f"Unsupported lti_version {_short(fields['lti_version'])}:"
                                     " only LTI-1p0 (LTI 1.1) is accepted here.", key)

    @staticmethod
    def _check_oauth_form(fields: dict[str, str], key: str | None) -> None:
        for name in REQUIRED_OAUTH:
            if not fields.get(name):
                raise LaunchRefused(400, f"The launch is missing the required OAuth parameter "
                                         f"{name}.", key)
        if fields["oauth_signature_method"] != "HMAC-SHA1":
            raise LaunchRefused(400, f"Unsupported oauth_signature_method "
                                     f"{_short(fields['oauth_signature_method'])}: "
                                     "only HMAC-SHA1 is accepted.", key)
        if fields.get("oauth_version", "1.0") != "1.0":
            raise LaunchRefused(400, f"Unsupported oauth_version "
                                     f"{_short(fields['oauth_version'])}: only 1.0.", key)
        if len(key) > MAX_KEY:
            raise LaunchRefused(400, "The oauth_consumer_key is too long.", None)
        if len(fields["oauth_nonce"]) > MAX_NONCE:
            raise LaunchRefused(400, f"The oauth_nonce is longer than {MAX_NONCE} characters.",
                                key)
        if not fields["oauth_timestamp"].isascii() or not fields["oauth_timestamp"].isdigit():
            raise LaunchRefused(400, f"The oauth_timestamp {_short(fields['oauth_timestamp'])}"
                                     " is not a number of seconds.", key)

    def _check_timestamp(self, timestamp: str, key: str) -> None:
        skew = int(timestamp) - self.clock()
        if abs(skew) > self.window:
            when = "old" if skew < 0 else "in the future"
            raise LaunchRefused(401, f"The launch's timestamp is {abs(skew):.0f} seconds {when};"
                                     f" at most {self.window:.0f} are allowed. Launch again "
                                     "from the course, and check the LMS server's clock.", key)

    def _check_signature(self, method: str, query: bytes, params, key: str) -> None:
        try:
            uri = self.launch_url + ("?" + query.decode("ascii") if query else "")
            valid, _ = self.endpoint.validate_request(
                uri, method, body=params, headers={"Content-Type": _FORM})
        except (UnicodeDecodeError, ValueError):
            # oauthlib cannot read the query string; nothing can have signed it
            valid = False
        if not valid:
            raise LaunchRefused(401, f"Bad OAuth signature for consumer key {_short(key)}: the "
                                     "shared secret is wrong, a parameter was changed, or the "
                                     f"LMS signed another URL than {self.launch_url}.", key)

    # -- what the launch says ------------------------------------------------
    def _launch(self, fields: dict[str, str], key: str) -> Launch:
        email, rejected = None, None
        sent = fields.get("lis_person_contact_email_primary", "").strip()
        if sent:
            try:
                email = check_address(sent)
            except AddressError:
                rejected = sent
        name = _clean(fields.get("lis_person_name_full", ""))
        if not name:
            name = _clean(" ".join((fields.get("lis_person_name_given", ""),
                                    fields.get("lis_person_name_family", ""))))
        roles = tuple(r for r in (part.strip() for part in fields.get("roles", "").split(","))
                      if r)
        context_id = fields.get("context_id", "").strip() or None
        group = _clean(fields.get(self.group_parameter, "")) or None
        if group is not None and len(group) > MAX_GROUP_NAME:
            raise LaunchRefused(400, f"The group name in {self.group_parameter} is longer "
                                     f"than {MAX_GROUP_NAME} characters.", key)
        return Launch(
            consumer_key=key,
            user_id=fields["user_id"],  # opaque: as sent
            email=email,
            rejected_email=rejected,
            display_name=name,
            roles=roles,
            context_id=context_id,
            context_title=_clean(fields.get("context_title", "")),
            group=group,
            resource_link_id=fields["resource_link_id"],
        )
