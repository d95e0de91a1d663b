"""
URL tokens for link rows.

hashids makes the token short and URL-safe, but it is not encryption: the
salt can be recovered from samples and an altered token can decode to other
numbers.  So the token carries the row id *and* 64 random bits stored in the
row, which the server compares; and a token is only accepted if re-encoding
what it decoded gives the same string, so each row has exactly one token.
"""

from __future__ import annotations

import functools
import secrets

import attrs
import hashids
from hashids import Hashids

MIN_LENGTH = 12
_MAX_TOKEN = 64

# hashids shuffles its alphabet (_reorder, pure Python) three times to
# decode a token of three numbers and three more to re-encode it for the
# canonical check: about 45 of a decode's 60 microseconds, on every link
# click.  The shuffles depend only on the salt, the alphabet and the
# token's first character, so there are a few hundred of them per salt:
# remember them.  _reorder is a pure function of its two strings, so the
# tokens are exactly those of hashids itself (tests/web/test_tokens.py).
if not hasattr(hashids._reorder, "cache_info"):
    hashids._reorder = functools.lru_cache(maxsize=4096)(hashids._reorder)


@attrs.frozen
class TokenParts:
    link_id: int
    secret_hi: int
    secret_lo: int


def new_secret() -> tuple[int, int]:
    """
    64 random bits as two 32-bit halves (hashids encodes non-negative ints).
    """
    return secrets.randbits(32), secrets.randbits(32)


class TokenCodec:
    def __init__(self, salt: str, min_length: int = MIN_LENGTH):
        self._hashids = Hashids(salt=salt, min_length=min_length)

    def encode(self, parts: TokenParts) -> str:
        return self._hashids.encode(parts.link_id, parts.secret_hi, parts.secret_lo)

    def decode(self, token: str) -> TokenParts | None:
        """
        The parts of a canonical token, or None for anything else (garbage,
        truncated, altered, or a non-canonical spelling of a valid one).
        """
        if not isinstance(token, str) or not token or len(token) > _MAX_TOKEN or not token.isalnum():
            return None
        # hashids' decode re-encodes what it decoded and answers () unless
        # that gives the same string: the token is canonical if we get 3
        numbers = self._hashids.decode(token)
        if len(numbers) != 3:
            return None
        return TokenParts(*numbers)
