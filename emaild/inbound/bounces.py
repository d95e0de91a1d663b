"""
The relay processor's rows that are not group posts: mail to an
unsubscribe address (the person it names is unsubscribed) and bounces of
our own messages (recorded; an address with C{[groups] hard_bounce_limit}
hard bounces is suppressed).  Each runs in the processor's transaction.
"""

from __future__ import annotations

from emaild.inbound.dsn import parse_bounce
from emaild.inbound.records import Pending
from emaild.inbound.store import record_bounce_txn
from emaild.links.service import UNSUBSCRIBE as UNSUBSCRIBE_LINK
from emaild.outbound.store import bounced_message_txn, record_bounced_txn, suppress_address_txn


async def unsubscribe_by_mail(links, outbox, pending: Pending) -> tuple[str, str]:
    """(state, reason) of mail to an unsubscribe address."""
    link = await links.store.get(pending.link_id) if pending.link_id else None
    if link is None or link.purpose != UNSUBSCRIBE_LINK:
        return "ignored", "the unsubscribe link no longer exists"
    scope = await outbox.unsubscribe(link, "kind", source="mailto")
    return "done", f"person {link.person_id} unsubscribed from {scope.target}"


async def record_bounce(cursor, pending: Pending, bounce_limit: int) -> tuple[str, str]:
    """(state, reason) of mail to the bounce address of one of our messages."""
    if pending.mail_from != "":
        return "ignored", ("not a bounce: mail to a bounce address must come from the "
                           "null sender <>")
    sent = await bounced_message_txn(cursor, pending.address)
    if sent is None:
        return "ignored", "no message of ours has this bounce address"
    outbox_id, recipient, person_id = sent.outbox_id, sent.recipient, sent.person_id
    reports = parse_bounce(pending.raw)
    if not reports:
        return "ignored", "no delivery status found in this bounce"
    report = next((r for r in reports if r.hard), reports[0])
    await record_bounced_txn(cursor, outbox_id, report.status, report.diagnostic)
    hard_bounces = await record_bounce_txn(
        cursor, address=recipient, outbox_id=outbox_id, person_id=person_id,
        hard=report.hard, status=report.status, diagnostic=report.diagnostic)
    what = "hard" if report.hard else "soft"
    if report.hard and hard_bounces >= bounce_limit:
        await suppress_address_txn(
            cursor, recipient, f"bounced: {hard_bounces} hard bounces, the last "
                               f"{report.status} {report.diagnostic}".strip()[:500])
        return "done", (f"{what} bounce of message {outbox_id} ({report.status}); address "
                        f"suppressed after {hard_bounces} hard bounces")
    return "done", f"{what} bounce of message {outbox_id} ({report.status})"
