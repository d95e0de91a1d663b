"""
TLS for the inbound SMTP server: Twisted's L{CertificateOptions} from a
certificate and key file (for STARTTLS), TLS 1.2 at least, and a
self-signed pair made on first start when the operator configures none.
"""

from __future__ import annotations

import datetime
import os
import re
import tempfile
from pathlib import Path

from twisted.internet.ssl import CertificateOptions, TLSVersion

#: where ensure_self_signed keeps its pair, under the state directory
SELF_SIGNED_DIR = "tls"
SELF_SIGNED_CERT = "smtp-cert.pem"
SELF_SIGNED_KEY = "smtp-key.pem"


#: the private key's PEM block in a file that may hold certificates too
_PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----",
                      re.S)


def tls_context_factory(certificate_path, key_path) -> CertificateOptions:
    """
    The server TLS options to hand L{InboundFactory} as C{tls_context}: the
    certificate file's first certificate, the chain after it, the key (from
    C{key_path}, which may be the certificate file itself), TLS 1.2 at least.
    Everything is loaded and the key checked against the certificate here,
    so a missing or mismatched file stops start-up instead of failing the
    first STARTTLS.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key_path = key_path or certificate_path
    chain = x509.load_pem_x509_certificates(Path(certificate_path).read_bytes())
    key_pem = _PEM_KEY.search(Path(key_path).read_bytes())
    if key_pem is None:
        raise ValueError(f"{key_path}: no PEM private key in it")
    key = load_pem_private_key(key_pem.group(), password=None)
    options = CertificateOptions(privateKey=key, certificate=chain[0],
                                 extraCertChain=chain[1:],
                                 raiseMinimumTo=TLSVersion.TLSv1_2)
    options.getContext()  # builds the context now: check_privatekey() raises
    return options


def _write_atomically(path: Path, content: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def ensure_self_signed(state_dir: Path, hostname: str) -> tuple[Path, Path]:
    """
    Return C{(certificate, key)} paths of a self-signed pair for C{hostname}
    under C{state_dir/tls/}, making it on first use and reusing it after.
    The key file is mode 0600.  Sending MTAs use STARTTLS opportunistically
    and do not check the certificate, so self-signed is enough to encrypt.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    directory = Path(state_dir) / SELF_SIGNED_DIR
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / SELF_SIGNED_CERT
    key_path = directory / SELF_SIGNED_KEY
    if cert_path.exists() and key_path.exists():
        if key_path.stat().st_mode & 0o077:
            key_path.chmod(0o600)
        return cert_path, key_path

    # RSA rather than EC: some sending MTAs still offer no ECDSA suites.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname or "localhost")]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # key first: a certificate file present means its key was written
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path
