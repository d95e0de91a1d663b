"""
An OAuth 1.0a HMAC-SHA1 signer written from RFC 5849, for the tests only,
so that launches are not signed by the same library that verifies them.

    params = sign("POST", "https://lms.example/launch", [("user_id", "u1"), ...],
                  consumer_key="key", consumer_secret="secret")
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from urllib.parse import parse_qsl, urlsplit

#: RFC 5849 section 3.6: these are never encoded
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def percent_encode(value: str) -> str:
    """
    RFC 5849 section 3.6: UTF-8, then every byte but the unreserved ones as
    C{%XX} with upper-case hex digits.
    """
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in value.encode("utf-8"))


def base_string_uri(url: str) -> str:
    """
    RFC 5849 section 3.4.1.2: scheme and host in lower case, the port only
    when it is not the scheme's default, the path (at least C{/}); no query,
    no fragment.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path or '/'}"


def normalized_parameters(params: list[tuple[str, str]]) -> str:
    """
    RFC 5849 section 3.4.1.3.2: encode every name and value, sort by name
    then value (byte order of the encoded strings), join with C{=} and
    C{&}.
    """
    encoded = sorted((percent_encode(k), percent_encode(v)) for k, v in params)
    return "&".join(f"{k}={v}" for k, v in encoded)


def base_string(method: str, url: str, params: list[tuple[str, str]]) -> str:
    """
    RFC 5849 section 3.4.1: the signature base string.  C{params} are the
    body's (and any Authorization header's) parameters; the query string of
    C{url} is added here; C{oauth_signature} and C{realm} are left out.
    """
    query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    every = [(k, v) for k, v in list(params) + query if k not in ("oauth_signature", "realm")]
    return "&".join((method.upper(), percent_encode(base_string_uri(url)),
                     percent_encode(normalized_parameters(every))))


def hmac_sha1(base: str, consumer_secret: str, token_secret: str = "") -> str:
    """
    RFC 5849 section 3.4.2: key = encoded secrets joined by C{&}; the
    signature is the base64 of the HMAC-SHA1 digest.
    """
    key = f"{percent_encode(consumer_secret)}&{percent_encode(token_secret)}"
    digest = hmac.new(key.encode("ascii"), base.encode("ascii"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def sign(method: str, url: str, params: list[tuple[str, str]] | dict, consumer_key: str,
         consumer_secret: str, timestamp: int | None = None, nonce: str | None = None,
         extra_oauth: dict | None = None) -> list[tuple[str, str]]:
    """
    C{params} plus the OAuth protocol parameters and the signature, ready to
    send as a form body (RFC 5849 section 3.5.2).
    """
    params = list(params.items()) if isinstance(params, dict) else list(params)
    oauth = {
        "oauth_consumer_key": consumer_key,
        "oauth_signature_method": "HMAC-SHA1",
        "oauth_timestamp": str(int(time.time()) if timestamp is None else timestamp),
        "oauth_nonce": nonce or secrets.token_hex(16),
        "oauth_version": "1.0",
        "oauth_callback": "about:blank",
        **(extra_oauth or {}),
    }
    every = params + list(oauth.items())
    signature = hmac_sha1(base_string(method, url, every), consumer_secret)
    return every + [("oauth_signature", signature)]


def form_body(params: list[tuple[str, str]]) -> bytes:
    """
    C{application/x-www-form-urlencoded}, encoded the RFC 5849 way (which
    any form decoder reads back).
    """
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in params).encode("ascii")
