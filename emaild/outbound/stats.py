"""
Summaries of the outbox for people and programs: the same dict is printed by
C{emaild queue --json} and served by the JSON API.
"""

from __future__ import annotations

from typing import Mapping

from emaild.outbound.store import STATES

#: states in which a message needs no more work
FINISHED = ("sent", "failed", "suppressed")
#: states in which a message still waits for the sender
PENDING = ("queued", "sending")


def queue_summary(counts: Mapping[str, Mapping[str, int]]) -> dict:
    """
    From L{OutboxStore.counts}' C{{state: {qos: n}}} to::

        {"queued": n, "sending": n, "sent": n, "failed": n, "suppressed": n,
         "total": n, "by_class": {qos: {"queued": n, …, "suppressed": n}, …}}

    Every state is present (zero when empty), in the order above; classes
    are sorted by name and list every state too.
    """
    summary: dict = {}
    by_class: dict[str, dict[str, int]] = {}
    for state in STATES:
        per_class = counts.get(state) or {}
        summary[state] = sum(per_class.values())
        for qos, n in per_class.items():
            by_class.setdefault(qos, dict.fromkeys(STATES, 0))[state] += n
    summary["total"] = sum(summary[state] for state in STATES)
    summary["by_class"] = {qos: by_class[qos] for qos in sorted(by_class)}
    return summary


async def queue_report(store) -> dict:
    """
    What C{emaild queue --json} prints and C{GET /api/v1/queue} answers:
    L{queue_summary} of the whole outbox plus C{suppressed_addresses}, the
    number of addresses nothing is sent to.
    """
    summary = queue_summary(await store.counts())
    return {**summary, "suppressed_addresses": await store.suppression_count()}


def finished(summary: Mapping[str, int]) -> int:
    """
    Messages the sender is done with (sent, failed or suppressed).
    """
    return sum(summary[state] for state in FINISHED)


def pending(summary: Mapping[str, int]) -> int:
    """
    Messages still queued or being sent.
    """
    return sum(summary[state] for state in PENDING)
