"""
The syntax of SMTP commands as the inbound server reads them: paths in MAIL
and RCPT, and text made safe for replies and headers.
"""

from __future__ import annotations


def printable(text: str, limit: int = 200) -> str:
    """Printable ASCII only, for replies and headers."""
    return "".join(c if " " <= c <= "~" else "?" for c in str(text))[:limit]


def parse_path(rest: bytes) -> tuple[str, list[bytes]]:
    """
    C{<local@domain> PARAM=x …} (angle brackets optional, source routes
    dropped) -> (address, params).  ValueError when malformed.
    """
    rest = rest.strip()
    if rest.startswith(b"<"):
        end = rest.find(b">")
        if end < 0:
            raise ValueError("no closing >")
        path, tail = rest[1:end], rest[end + 1:]
        if tail and not tail[:1].isspace():
            raise ValueError("text after >")
    else:
        path, _, tail = rest.partition(b" ")
        if not path:
            raise ValueError("no address")
    if path.startswith(b"@"):
        colon = path.find(b":")
        if colon < 0:
            raise ValueError("bad source route")
        path = path[colon + 1:]
    if any(c <= 0x20 or c == 0x7F for c in path) or b"<" in path:
        raise ValueError("bad character")
    address = path.decode("utf-8")  # UnicodeDecodeError is a ValueError
    if len(address) > 256:
        raise ValueError("too long")
    return address, tail.split()


def is_mailbox(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain)
