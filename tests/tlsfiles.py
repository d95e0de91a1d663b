"""
Throwaway TLS material for loopback tests, generated with C{cryptography}.

L{make_tls_files} writes into a directory:
  - C{ca.pem}: a test CA certificate (what clients are told to trust);
  - C{localhost.pem}: key + certificate for "localhost" and 127.0.0.1,
    signed by the CA (the good server certificate);
  - C{wrong-host.pem}: key + certificate for "wrong.example", signed by the
    same CA, so only the hostname check can reject it;
  - C{self-signed.pem}: key + self-signed certificate for "localhost" that no
    client trusts (the chain check rejects it).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@attrs.frozen
class TLSFiles:
    directory: str
    ca_path: str
    ca_pem: bytes
    localhost_pem: bytes
    wrong_host_pem: bytes
    self_signed_pem: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(subject_cn, key, issuer_name, issuer_key, *, ca=False, dns=(), ips=()):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    names = [x509.DNSName(d) for d in dns] + [
        x509.IPAddress(ipaddress.ip_address(i)) for i in ips
    ]
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls_files(directory: str | None = None) -> TLSFiles:
    """
    Generate the CA and certificates described in the module docstring into
    C{directory} (a new temporary directory when None).
    """
    if directory is None:
        directory = tempfile.mkdtemp(prefix="emaild-tls-")
    # EC keys: generating RSA keys would make every test run slower.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("emaild test CA")
    ca_cert = _cert("emaild test CA", ca_key, ca_name, ca_key, ca=True)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)

    def leaf(cn, dns, ips, signed_by_ca=True):
        key = ec.generate_private_key(ec.SECP256R1())
        if signed_by_ca:
            cert = _cert(cn, key, ca_name, ca_key, dns=dns, ips=ips)
        else:
            cert = _cert(cn, key, _name(cn), key, dns=dns, ips=ips)
        return _key_pem(key) + cert.public_bytes(serialization.Encoding.PEM)

    files = {
        "ca.pem": ca_pem,
        "localhost.pem": leaf("localhost", ["localhost"], ["127.0.0.1"]),
        "wrong-host.pem": leaf("wrong.example", ["wrong.example"], []),
        "self-signed.pem": leaf("localhost", ["localhost"], ["127.0.0.1"], False),
    }
    for name, content in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(content)
    return TLSFiles(
        directory=directory,
        ca_path=os.path.join(directory, "ca.pem"),
        ca_pem=ca_pem,
        localhost_pem=files["localhost.pem"],
        wrong_host_pem=files["wrong-host.pem"],
        self_signed_pem=files["self-signed.pem"],
    )
