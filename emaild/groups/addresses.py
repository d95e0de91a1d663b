"""
Personal reply addresses: C{<prefix>-<token>@<relay domain>}.

The token is hashids over (group id, person id, 64 secret bits stored in
the membership), so decoding alone proves nothing: the secret must match the
live membership row (see docs/design.md, hashids).  The alphabet is lower-case
letters and digits because some MTAs fold the case of local parts; a
decoded token is canonical (hashids re-encodes and compares), so each
membership has exactly one address.
"""

from __future__ import annotations

import functools

import attrs
from hashids import Hashids

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
MIN_LENGTH = 16
_MAX_TOKEN = 64
#: tokens remembered each way: every RCPT decodes one (and encodes it back
#: to check it is canonical), every relayed copy encodes its recipient's
#: own, and one member's or one group's come again and again
_REMEMBERED = 4096


@attrs.frozen
class ReplyToken:
    group_id: int
    person_id: int
    secret_hi: int
    secret_lo: int


class ReplyAddresses:
    """
    Encode and parse the reply addresses of one relay domain.
    """

    def __init__(self, salt: str, relay_domain: str, prefix: str = "group"):
        self._hashids = Hashids(salt=salt, min_length=MIN_LENGTH, alphabet=ALPHABET)
        # hashids is pure Python and both ways are pure functions of the
        # salt: remember the latest answers (bounded, so random tokens sent
        # by anyone cannot grow it)
        self._encode = functools.lru_cache(maxsize=_REMEMBERED)(self._hashids.encode)
        self._decode = functools.lru_cache(maxsize=_REMEMBERED)(self._hashids.decode)
        self.domain = relay_domain.lower()
        self.prefix = prefix.lower()

    def address(self, token: ReplyToken) -> str:
        encoded = self._encode(token.group_id, token.person_id, token.secret_hi,
                               token.secret_lo)
        return f"{self.prefix}-{encoded}@{self.domain}"

    def parse(self, address: str) -> ReplyToken | None:
        """
        The token of a reply address on our domain, or None for anything
        else (other domains, other local parts, altered or truncated tokens).
        """
        local, at, domain = address.rpartition("@")
        if not at or domain.lower() != self.domain:
            return None
        prefix, dash, encoded = local.lower().rpartition("-")
        if prefix != self.prefix or not dash:
            return None
        if not encoded or len(encoded) > _MAX_TOKEN or not encoded.isalnum():
            return None
        numbers = self._decode(encoded)
        if len(numbers) != 4:
            return None
        return ReplyToken(*numbers)

    def is_ours(self, address: str) -> bool:
        return address.rpartition("@")[2].lower() == self.domain


def reply_addresses(config) -> ReplyAddresses:
    """
    The reply addresses of a configuration: C{[groups] address_salt} (or
    C{[links] salt} + C{"/reply"} when it is empty), C{[smtp] relay_domain}
    and C{[groups] address_prefix}.  Everything that makes or reads reply
    addresses uses this, so they always agree.
    """
    groups = config["groups"]
    return ReplyAddresses(groups["address_salt"] or config["links"]["salt"] + "/reply",
                          config["smtp"]["relay_domain"], groups["address_prefix"])
