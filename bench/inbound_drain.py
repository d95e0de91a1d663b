"""
The relay processor alone: CPU per relayed post, of the processor and of
PostgreSQL, with nothing else running.

    PYTHONPATH=$PWD .venv/bin/python bench/inbound_drain.py [--posts 3000] [--members 2]
                                                            [--rounds 3] [--size 2048]
                                                            [--profile]

Each round stores POSTS posts from one member to their group's reply
address (InboundStore.receive, what the SMTP server does before 250; the
messages look like smtp-source's, with our Received header), then starts
the relay processor of the daemon's own composition root (HomeServer) in
this process, and waits until every row is done.  Reported: posts/s, and
CPU (user + system) in ms per post of this process and of PostgreSQL over
the drain, and the copies queued (members - 1 per post).  The sender is not
running, so writing the copies out is not counted (bench/inbound.py
measures the whole daemon).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Bench, cpu_seconds, free_port, median, reexec_in_venv, table  # noqa: E402
from bench.inbound_setup import import_group, lift_limits  # noqa: E402


def message(n: int, sender: str, rcpt: str, size: int) -> bytes:
    body = b"".join(b"La de da de da %d.\r\n" % i for i in range(size // 16 + 1))[:size]
    return (b"Received: from client.example.edu ([127.0.0.1])\r\n"
            b"\tby bench.example.org (emaild) with ESMTP;\r\n"
            b"\tTue, 01 Dec 2026 22:00:00 +0000\r\n"
            + f"From: <{sender}>\r\nTo: <{rcpt}>\r\nDate: Tue, 01 Dec 2026 22:00:00 +0000\r\n"
              f"Message-Id: <{time.time_ns()}.{n}@client.example.edu>\r\n"
              f"Subject: smtp-source test {n}\r\n\r\n".encode() + body)


async def drain_round(hs, pg_pid: int, member: dict, args) -> dict:
    from twisted.internet import reactor, task

    store, handler = hs.get_inbound_store(), hs.get_inbound_handler()
    recipient = await handler.check_recipient(member["reply_address"], member["email"])
    for n in range(args.posts):
        await store.receive(peer="127.0.0.1", helo="client.example.edu", tls=False,
                            mail_from=member["email"], recipients=[recipient],
                            raw=message(n, member["email"], member["reply_address"], args.size))
    outbox0 = (await hs.get_database().runQuery("SELECT count(*) FROM outbox"))[0][0]
    processor = hs.get_relay_processor()
    profile = cProfile.Profile() if args.profile else None
    cpu0, pg0, t0 = time.process_time(), cpu_seconds(pg_pid), time.monotonic()
    if profile:
        profile.enable()
    processor.startService()
    while (await store.counts())["received"]:
        await task.deferLater(reactor, 0.05, lambda: None)
    if profile:
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    seconds = time.monotonic() - t0
    cpu, pg = time.process_time() - cpu0, cpu_seconds(pg_pid) - pg0
    await processor.stopService()
    copies = (await hs.get_database().runQuery("SELECT count(*) FROM outbox"))[0][0] - outbox0
    return {"seconds": seconds, "rate": args.posts / seconds, "copies": copies,
            "ms": cpu * 1000 / args.posts, "pg ms": pg * 1000 / args.posts}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=2048, help="body bytes")
    parser.add_argument("--profile", action="store_true",
                        help="print the drain's hottest functions (cProfile; slower)")
    args = parser.parse_args()

    from twisted.internet import defer, task

    from emaild.config import load_config
    from emaild.homeserver import HomeServer

    with Bench("inbound-drain") as b:
        config = b.config("drain.toml", smtp_port=free_port(), transport="maildir")
        lift_limits(config)
        members = import_group(b, config, "group", args.members)
        pg_pid = b.postmaster_pid()
        rounds = []

        async def run(reactor):
            for i in range(args.rounds):
                hs = HomeServer(load_config(config), reactor)  # a fresh processor per round
                await hs.open_database()
                try:
                    r = await drain_round(hs, pg_pid, members[0], args)
                finally:
                    await hs.close_database()
                r["round"] = i + 1
                rounds.append(r)
                print(f"  round {i + 1}: {args.posts} posts drained in {r['seconds']:.2f}s ="
                      f" {r['rate']:.0f}/s, {r['copies']} copies; cpu ms/post processor"
                      f" {r['ms']:.2f} pg {r['pg ms']:.2f}", flush=True)

        try:
            task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
        except SystemExit as e:  # react's way to say it is done
            if e.code:
                raise

    print(table(["round", "posts/s", "copies", "processor ms/post", "pg ms/post"],
                [[r["round"], f"{r['rate']:.0f}", r["copies"], f"{r['ms']:.2f}",
                  f"{r['pg ms']:.2f}"] for r in rounds]))
    print(f"median: {median([r['rate'] for r in rounds]):.0f} posts/s, processor "
          f"{median([r['ms'] for r in rounds]):.2f} ms/post, PostgreSQL "
          f"{median([r['pg ms'] for r in rounds]):.2f} ms/post ({args.members} members: "
          f"{args.members - 1} copies per post)")


if __name__ == "__main__":
    reexec_in_venv()
    main()
