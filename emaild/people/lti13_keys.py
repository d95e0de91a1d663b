"""
The tool's own RSA signing keys for LTI 1.3 (RFC 7517/7518), kept as PEM
files under C{<state_dir>/lti/keys/}.

Each file is C{<kid>.pem} (PKCS#8, mode 0600); a kid is
C{YYYYmmddTHHMMSSZ-<8 hex digits>}, so the newest key sorts last and is the
signing key.  L{ToolKeys.rotate} adds a new one (which signs from then on);
the older ones stay published in the JWKS until L{ToolKeys.retire} removes
them, so a platform that cached our JWKS keeps verifying what was signed
just before a rotation.  The signing key itself cannot be retired.
"""

from __future__ import annotations

import base64
import datetime
import os
import re
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

#: RSA modulus size of new keys (the Security Framework asks for 2048 or more)
KEY_BITS = 2048

_KID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


class ToolKeyError(Exception):
    """
    A key operation cannot be done; the message says why.
    """


def b64url_uint(value: int) -> str:
    """
    An unsigned integer as JWK wants it: big-endian bytes, base64url, no padding.
    """
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def public_jwk(kid: str, key: rsa.RSAPrivateKey) -> dict:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": b64url_uint(numbers.n), "e": b64url_uint(numbers.e)}


class ToolKeys:
    def __init__(self, directory: Path, clock=None):
        self.directory = Path(directory)
        self.clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._loaded: dict[str, rsa.RSAPrivateKey] = {}

    def kids(self) -> list[str]:
        """
        The kids of the keys on disk, oldest first.
        """
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("*.pem") if _KID.match(p.stem))

    def ensure(self) -> str:
        """
        Make the first key if there is none; return the signing key's kid.
        """
        kids = self.kids()
        return kids[-1] if kids else self.rotate()

    def rotate(self) -> str:
        """
        Make a new key, which becomes the signing key; return its kid.
        """
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = self.clock().strftime("%Y%m%dT%H%M%SZ")
        kids = self.kids()
        if kids and kids[-1][:16] > stamp:
            stamp = kids[-1][:16]  # the clock went back: the new key must still sort last
        kid = f"{stamp}-{secrets.token_hex(4)}"
        while kids and kid <= kids[-1]:  # two rotations within one second
            kid = f"{stamp}-{secrets.token_hex(4)}"
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        path = self.directory / f"{kid}.pem"
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(temporary, path)
        self._loaded[kid] = key
        return kid

    def retire(self, kid: str) -> None:
        """
        Stop publishing the key C{kid} (its file is deleted).

        @raise ToolKeyError: no such key, or it is the signing key.
        """
        kids = self.kids()
        if kid not in kids:
            raise ToolKeyError(f"no key {kid!r}; keys: {', '.join(kids) or 'none'}")
        if kid == kids[-1]:
            raise ToolKeyError(f"{kid} is the signing key; rotate first (emaild lti rotate-key)")
        (self.directory / f"{kid}.pem").unlink()
        self._loaded.pop(kid, None)

    def private_key(self, kid: str) -> rsa.RSAPrivateKey:
        if kid not in self._loaded:
            pem = (self.directory / f"{kid}.pem").read_bytes()
            key = serialization.load_pem_private_key(pem, password=None)
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ToolKeyError(f"{kid}.pem is not an RSA private key")
            self._loaded[kid] = key
        return self._loaded[kid]

    def signing_key(self) -> tuple[str, rsa.RSAPrivateKey]:
        kid = self.ensure()
        return kid, self.private_key(kid)

    def jwks(self) -> dict:
        """
        The public keys, as an RFC 7517 JWK Set (newest first).
        """
        self.ensure()
        return {"keys": [public_jwk(kid, self.private_key(kid)) for kid in reversed(self.kids())]}
