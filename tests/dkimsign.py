"""
A small DKIM signer written from RFC 6376 for the tests (relaxed/relaxed,
rsa-sha256, with C{cryptography}), so that what emaild verifies with dkimpy
was signed by something other than dkimpy.
"""

from __future__ import annotations

import base64
import hashlib
import re

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def new_key(bits: int = 2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_record(key) -> str:
    """The TXT record to publish at C{<selector>._domainkey.<domain>}."""
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 section 3.4.4."""
    lines = body.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    lines = [re.sub(rb"[ \t]+", b" ", line).rstrip(b" \t") for line in lines]
    while lines and lines[-1] == b"":
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """RFC 6376 section 3.4.2, without the final CRLF."""
    value = re.sub(rb"\r\n", b"", value)
    value = re.sub(rb"[ \t]+", b" ", value).strip(b" \t")
    return name.strip().lower() + b":" + value


def _headers(head: bytes) -> list[tuple[bytes, bytes]]:
    fields: list[list[bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1][1] += b"\r\n" + line
        elif line:
            name, _, value = line.partition(b":")
            fields.append([name, value])
    return [(n, v) for n, v in fields]


def sign(message: bytes, *, domain: str, selector: str, key,
         headers=("from", "to", "subject", "date", "message-id"),
         body_length: bool = False) -> bytes:
    """
    C{message} (CRLF line ends) with a DKIM-Signature header in front;
    C{body_length} adds C{l=} (the whole canonical body).
    """
    head, _, body = message.partition(b"\r\n\r\n")
    fields = _headers(head)
    canonical = relaxed_body(body)
    body_hash = base64.b64encode(hashlib.sha256(canonical).digest()).decode()
    present = [h for h in headers if any(n.strip().lower() == h.encode() for n, _ in fields)]
    length = f" l={len(canonical)};" if body_length else ""
    value = (f" v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s={selector};{length}"
             f" h={':'.join(present)}; bh={body_hash}; b=")
    signed = b""
    used: dict[bytes, int] = {}
    for name in present:
        # the last instance of a repeated header is signed first (5.4.2)
        instances = [f for f in fields if f[0].strip().lower() == name.encode()]
        n = used.get(name.encode(), 0)
        used[name.encode()] = n + 1
        field = instances[-1 - n]
        signed += relaxed_header(*field) + b"\r\n"
    signed += relaxed_header(b"DKIM-Signature", value.encode())
    signature = key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    header = f"DKIM-Signature:{value}{base64.b64encode(signature).decode()}\r\n"
    return header.encode("ascii") + message
