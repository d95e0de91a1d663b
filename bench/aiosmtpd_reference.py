"""
The reference inbound server for bench/inbound.py: aiosmtpd with an asyncpg
pool, doing the same work per message as emaild's inbound server, on the
same PostgreSQL:

  - RCPT: decode the reply address with emaild's own codec (hashids, the
    same salt and domain), look the membership up (one query, the same
    join as emaild's GroupStore.member) and check its secret, that it is
    live and that MAIL FROM is the member's address; else 550;
  - end of DATA: in ONE transaction, INSERT the raw bytes (with a Received
    header in front) into a copy of inbound_messages, INSERT the recipient
    row into a copy of inbound_recipients (same columns, defaults, indexes,
    storage and foreign keys), NOTIFY, COMMIT; only then 250.

The copies (bench_ref_messages, bench_ref_recipients) are made with
CREATE TABLE ... (LIKE ... INCLUDING ALL) so emaild's relay processor never
sees these rows.  synchronous_commit is the server's (on), as for emaild;
the pool has as many connections as emaild's [database] pool_size.

    python bench/aiosmtpd_reference.py --port P --dsn DSN [--pool 4]
        [--salt S] [--domain D]

Prints "listening on PORT" once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import sys
from pathlib import Path

import asyncpg
from aiosmtpd.smtp import SMTP

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emaild.groups.addresses import ReplyAddresses  # noqa: E402

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_ref_messages (LIKE inbound_messages INCLUDING ALL);
CREATE TABLE IF NOT EXISTS bench_ref_recipients (
    LIKE inbound_recipients INCLUDING ALL,
    FOREIGN KEY (message_id) REFERENCES bench_ref_messages (id) ON DELETE CASCADE,
    FOREIGN KEY (group_id) REFERENCES groups (id) ON DELETE SET NULL,
    FOREIGN KEY (person_id) REFERENCES people (id) ON DELETE SET NULL);
"""

MEMBER = ("SELECT m.group_id, m.person_id, p.email, m.left_at, m.reply_secret_hi,"
          " m.reply_secret_lo FROM group_members m JOIN people p ON p.id = m.person_id"
          " WHERE m.group_id = $1 AND m.person_id = $2")
INSERT_MESSAGE = ("INSERT INTO bench_ref_messages (peer, helo, tls, mail_from, size, raw)"
                  " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id")
INSERT_RECIPIENT = ("INSERT INTO bench_ref_recipients (message_id, address, purpose, group_id,"
                    " person_id) VALUES ($1, $2, 'relay', $3, $4)")


class Handler:
    def __init__(self, pool: asyncpg.Pool, addresses: ReplyAddresses, hostname: str):
        self.pool = pool
        self.addresses = addresses
        self.hostname = hostname

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        token = self.addresses.parse(address)
        if token is None:
            return "550 5.1.1 no such address here"
        row = await self.pool.fetchrow(MEMBER, token.group_id, token.person_id)
        if row is None or (row["reply_secret_hi"], row["reply_secret_lo"]) != (
                token.secret_hi, token.secret_lo):
            return "550 5.1.1 no such address here"
        if row["left_at"] is not None:
            return "550 5.1.1 this group address no longer works"
        if not row["email"] or row["email"].lower() != (envelope.mail_from or "").lower():
            return "550 5.7.1 not from the member"
        envelope.rcpt_tos.append(address)
        if not hasattr(envelope, "members"):
            envelope.members = []
        envelope.members.append((address, row["group_id"], row["person_id"]))
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        now = email.utils.formatdate(usegmt=True)
        received = (f"Received: from {session.host_name} ([{session.peer[0]}])\r\n"
                    f"\tby {self.hostname} (aiosmtpd) with ESMTP;\r\n\t{now}\r\n").encode()
        body = envelope.original_content
        raw = received + body
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                message_id = await conn.fetchval(
                    INSERT_MESSAGE, session.peer[0], session.host_name or "", False,
                    envelope.mail_from or "", len(body), raw)
                await conn.executemany(INSERT_RECIPIENT, [
                    (message_id, address, group_id, person_id)
                    for address, group_id, person_id in envelope.members])
                await conn.execute("NOTIFY bench_ref_inbound")
        return f"250 2.0.0 Ok: queued as {message_id}"


def connect_args(dsn: str) -> dict:
    """asyncpg wants a URL; emaild's embedded PostgreSQL gives key=value."""
    if dsn.startswith(("postgres://", "postgresql://")):
        return {"dsn": dsn}
    from psycopg2.extensions import parse_dsn
    params = parse_dsn(dsn)
    if "dbname" in params:
        params["database"] = params.pop("dbname")
    if "port" in params:
        params["port"] = int(params["port"])
    return params


async def main(args) -> None:
    pool = await asyncpg.create_pool(**connect_args(args.dsn), min_size=args.pool,
                                     max_size=args.pool)
    async with pool.acquire() as conn:
        await conn.execute(SCHEMA)
    handler = Handler(pool, ReplyAddresses(args.salt, args.domain), args.domain)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=args.domain, data_size_limit=10 * 2**20,
                     enable_SMTPUTF8=False, decode_data=False, ident="aiosmtpd reference"),
        "127.0.0.1", args.port)
    print(f"listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--salt", default="emaild links/reply")
    parser.add_argument("--domain", default="bench.example.org")
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        pass
