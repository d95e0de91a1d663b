"""
What we accept as an e-mail address.
"""

from __future__ import annotations

import re

#: What we accept as a recipient: a plain ASCII addr-spec (no SMTPUTF8, no
#: quoted local parts, no source routes).  Anything else is refused where
#: it arrives, with a reason, never sent to the relay.
_ADDRESS = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}"
    r"@(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


class AddressError(ValueError):
    """
    Not an address we accept; the message says why.
    """


def check_address(address: str) -> str:
    """
    Return C{address} stripped, or raise L{AddressError} saying what is wrong.
    """
    if not isinstance(address, str):
        raise AddressError(f"recipient must be a string, got {address!r}")
    stripped = address.strip()
    if not stripped:
        raise AddressError("recipient address is empty")
    if not _ADDRESS.match(stripped) or ".." in stripped or stripped.startswith("."):
        raise AddressError(f"{address!r} is not a valid e-mail address")
    return stripped
