"""
Per-client limits of the inbound SMTP server: how many sessions one client
address (an IPv6 client: its /64) may hold at once and how many new
sessions it may open per minute, so that one client cannot take every slot
while others are refused.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import deque

#: the window of the connection rate, in seconds
WINDOW = 60.0
#: sweep forgotten clients once this many are remembered
_SWEEP_AT = 1024


def client_address(address) -> str:
    """The client's IP address (what per-client limits count by)."""
    return str(getattr(address, "host", None) or getattr(address, "name", None) or "local")


@functools.lru_cache(maxsize=4096)
def client_key(peer: str) -> str:
    """
    What one client is, for counting: its IPv4 address, or the /64 network
    of an IPv6 address (one host usually holds a whole /64).
    """
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class ClientLimits:
    """
    Counts sessions per client address with the reactor's clock.  Only
    accepted sessions are counted, so what is remembered per client is at
    most C{per_minute} times.
    """

    def __init__(self, clock, *, per_client: int, per_minute: int):
        self.clock = clock
        self.per_client = per_client
        self.per_minute = per_minute
        self._open: dict[str, int] = {}
        self._recent: dict[str, deque[float]] = {}

    def refusal(self, peer: str) -> str | None:
        """Why the client at C{peer} may not open a session now, or None."""
        client = client_key(peer)
        if self._open.get(client, 0) >= self.per_client:
            return "too many sessions from your address"
        recent = self._recent.get(client)
        if recent is not None:
            horizon = self.clock.seconds() - WINDOW
            while recent and recent[0] <= horizon:
                recent.popleft()
            if len(recent) >= self.per_minute:
                return "too many connections from your address in the last minute"
        return None

    def opened(self, peer: str) -> None:
        client = client_key(peer)
        self._open[client] = self._open.get(client, 0) + 1
        if client not in self._recent and len(self._recent) >= _SWEEP_AT:
            self._sweep()
        self._recent.setdefault(client, deque()).append(self.clock.seconds())

    def closed(self, peer: str) -> None:
        client = client_key(peer)
        n = self._open.get(client, 0) - 1
        if n > 0:
            self._open[client] = n
        else:
            self._open.pop(client, None)

    def open_sessions(self, peer: str) -> int:
        return self._open.get(client_key(peer), 0)

    def _sweep(self) -> None:
        horizon = self.clock.seconds() - WINDOW
        for client in [c for c, times in self._recent.items() if not times or times[-1] <= horizon]:
            del self._recent[client]
