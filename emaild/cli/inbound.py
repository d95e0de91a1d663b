"""
C{emaild inbound}: what the SMTP server received and what became of it.

    emaild inbound [--json] [--state STATE ...] [--limit N] [MESSAGE_ID]

Without arguments: counts per state, then the newest rows that were not
relayed (held, ignored or failed) with their reasons and the sender
authentication results.  With a message id (the one named in the server's
250 reply): each of its recipients, and the whole Authentication-Results
value.
"""

from __future__ import annotations

import json
import re

from emaild.cli.output import CliError, table, when
from emaild.cli.runtime import open_database
from emaild.inbound.store import TERMINAL

STATES = ("received", *TERMINAL, "held")
#: states listed by default: the rows that were not relayed (yet)
NOT_RELAYED = ("held", "ignored", "failed")


def auth_summary(authentication: str) -> str:
    """C{spf=fail dkim=pass dmarc=pass} from an Authentication-Results value."""
    return " ".join(re.findall(r"\b(?:spf|dkim|dmarc)=[a-z]+", authentication or ""))


def add_parser(commands, common) -> None:
    inbound = commands.add_parser(
        "inbound", parents=[common], help="show received mail and what became of it",
        description="Counts of received mail per state, the newest messages that were not "
                    "relayed and why, or every recipient of one message (by the id the SMTP "
                    "server's 250 reply named).")
    inbound.add_argument("message", nargs="?", type=int, metavar="MESSAGE_ID")
    inbound.add_argument("--state", action="append", choices=STATES,
                         help="only rows in this state (repeatable; default: held, ignored, failed)")
    inbound.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    inbound.add_argument("--json", action="store_true", help="print JSON")
    inbound.set_defaults(func=run)


async def run(parts, args) -> int:
    if args.limit < 1:
        raise CliError("--limit must be at least 1")
    await open_database(parts)
    store = parts.get_inbound_store()
    counts = await store.counts()
    if args.message is not None:
        rows = await store.recent(STATES, args.limit, message_id=args.message)
        if not rows:
            raise CliError(f"no received message {args.message}")
    else:
        rows = await store.recent(args.state or NOT_RELAYED, args.limit)
    refusals = await store.recent_refusals() if args.message is None else []
    if args.json:
        print(json.dumps({"counts": counts, "refusals": [
            {"reason": f.reason, "subject": f.subject, "address": f.address,
             "mail_from": f.mail_from, "reply": f.reply, "attempts": f.attempts,
             "first_at": when(f.first_at), "last_at": when(f.last_at)} for f in refusals],
            "rows": [
            {"message": r.message_id, "received_at": when(r.received_at),
             "mail_from": r.mail_from, "address": r.address, "purpose": r.purpose,
             "state": r.state, "reason": r.reason, "size": r.size,
             "authentication": r.authentication} for r in rows]},
            indent=2))
        return 0
    print("  ".join(f"{state} {counts[state]}" for state in STATES))
    if args.message is not None and rows[0].authentication:
        print(f"Authentication-Results: {rows[0].authentication}")
    if rows:
        print(table(["message", "received", "from", "to", "purpose", "state", "auth", "reason"],
                    [(r.message_id, when(r.received_at), r.mail_from or "<>", r.address,
                      r.purpose, r.state, auth_summary(r.authentication), r.reason or "")
                     for r in rows], right=[True] + [False] * 7))
    if refusals:  # refused before anything was stored (e.g. a member's posting rate)
        print("refused before storing:")
        print(table(["last", "reason", "to", "from", "attempts", "reply"],
                    [(when(f.last_at), f.reason, f.address, f.mail_from or "<>", f.attempts,
                      f.reply) for f in refusals], right=[False] * 4 + [True, False]))
    return 0
