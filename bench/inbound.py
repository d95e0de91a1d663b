"""
The inbound SMTP server and the group relay: (a) how fast emaild accepts
posts, with sender authentication on and off, beside an aiosmtpd reference
doing the same work, and how fast its relay processor drains them; (b) how
long a post to a 1,000-member group takes to become 999 outbox rows.

The full run (on a quiet machine; about 25 minutes), from the repository root:

    pip install 'aiosmtpd>=1.4.6,<2' 'asyncpg>=0.30,<1'     # the [bench] extra
    PYTHONPATH=$PWD .venv/bin/python bench/inbound.py

    options: [--quick] [--messages 10000] [--sessions 20] [--size 2048]
             [--rounds 3] [--posts 3] [--members 1000] [--pool 4]
             [--only accept|fanout] [--no-reference] [--no-auth-off]
             [--dns-ttl 300] [--quiet-wait 120] [--sender-rate both|shipped|lifted]
             [--py-spy] [--profile] [--keep]

Everything runs against the real daemon (`twistd -n emaild`, outbound
transport maildir, so sending writes files and talks to nobody) on an
embedded PostgreSQL in a fresh state directory.

The outbound sender's rate (--sender-rate).  What issues 9 and 12 measure
is the server's accept rate and the relay processor's drain (received rows
-> outbox rows), not outbound delivery; in production the copies leave at
the relay's rate (SES: the shipped default [relay] rate = 14/s) and wait in
the outbox meanwhile.  So the main case, "auth on", runs the sender at the
shipped default rate: during a burst it sends 14 copies a second and the
rest wait in the outbox, as in production.  The earlier condition, the
sender lifted to 100000/s so that it writes every copy to the maildir
while the burst goes on (the daemon's CPU then holds accept + relay +
sending), is still run beside it as "auth on, sender 1e5/s" (--sender-rate
both, the default), so the two are compared in the same run; `shipped` or
`lifted` runs one of them.  "auth off" runs at the shipped rate.  Groups are
made with `emaild group import FILE.csv`, reply addresses read with
`emaild group members GROUP --json`.  The members' domain
(students.example.edu) is served by bench/dns_zone.py, an authoritative
twisted.names server on 127.0.0.1 in its own process: SPF `v=spf1
ip4:127.0.0.1 -all` for it and for the HELO name, DMARC `p=reject`; the
daemon's `[dns] servers` points at it, so every post passes SPF, aligned,
hence DMARC, and is relayed.

(a) Accept rate.  Postfix smtp-source, one message per connection (no -d),
    `-s SESSIONS -m MESSAGES -l SIZE -f <member> -t <member's reply address>
    -M client.example.edu`, against three servers in turn:
      - "auth on":  the daemon as shipped (SPF, DKIM, DMARC on every post;
        answers cached for their TTL, --dns-ttl);
      - "auth off": the same service tree and config started by
        bench/emaild_without_sender_auth.py, whose composition root has no
        sender authentication (the handler's pre-authentication check:
        MAIL FROM is the member's address).  The daemon has no setting for
        this; see bench/RESULTS-inbound.md for why this is the comparison;
      - "aiosmtpd": bench/aiosmtpd_reference.py (aiosmtpd + asyncpg, same
        RCPT lookup, same INSERTs in one transaction per message into
        copies of emaild's tables, same database, pool of the same size;
        no sender authentication).
    Each emaild round starts a fresh daemon (only one relay processor runs);
    the processor runs DURING the measurement, as in production: its backlog
    when smtp-source finished is reported, and its drain rate = recipient
    rows / time from smtp-source's start until the last row is done.  Rounds
    are interleaved (each starts with the next case); before each
    measurement the script waits for the processor to drain and the machine
    to be quiet, and says when it did not get a quiet one.  After each it
    checks that the database holds exactly MESSAGES new messages with one
    recipient each (and, auth on, dmarc=pass on every one).  Rate = stored
    messages / smtp-source's wall time; CPU = user + system of the server's
    process tree, of PostgreSQL's, and of the DNS server's, over the burst,
    in ms per accepted post; "until drained": the daemon's and PostgreSQL's
    CPU from the burst's start until its last post is relayed, per post
    (accepting and relaying it).  Also per round: posts per group commit
    (distinct received_at) and recipient rows per relay batch (distinct
    processed_at: each is its transaction's start time).
    bench/inbound_drain.py measures the relay processor alone.

(b) Fan-out (auth on).  One post by smtplib from a member of a 1,000-member
    group to their reply address; latency = from the 250 reply until the
    post's group_posts row is visible (polled every 5 ms), which is
    committed in the same transaction as its 999 outbox rows (checked).
    Also shown: group_posts.created_at - inbound_messages.received_at (both
    transaction start times, so this leaves out the processor's own
    transaction).

--py-spy samples the daemon of every emaild burst with py-spy (--idle,
--format raw, 250 Hz; files py-spy-CASE-ROUND.txt in the state dir) and
prints where its time went: (a) accept, (b) relay processor, (c) sender
(bench/inbound_profile.py).  The sampling costs the daemon CPU: read the
shares from such a run, the rates and CPU per post from one without it.

--profile adds one more smtp-source run against a second daemon (auth on)
started under `twistd --profile FILE --profiler cprofile` and prints its
hottest functions (not part of the measured rounds).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Bench,
    cpu_seconds,
    free_port,
    median,
    postfix_env,
    postfix_tool,
    python,
    reexec_in_venv,
    table,
    twistd,
    wait_for,
    wait_quiet,
)
from bench.inbound_profile import summary as profile_shares  # noqa: E402
from bench.inbound_setup import (  # noqa: E402
    AUTH_OFF,
    AUTH_ON,
    AUTH_ON_LIFTED,
    REFERENCE,
    cprofile_summary,
    import_group,
    lift_limits,
    start_dns,
    start_emaild,
    start_reference,
    use_dns,
)


def pending(b: Bench) -> int:
    """Recipient rows the relay processor has not finished."""
    return b.sql("SELECT count(*) FROM inbound_recipients WHERE state = 'received'")[0][0]


def processor_idle(b: Bench) -> bool:
    c = b.counts()
    return pending(b) == 0 and c["queued"] == 0 and c["sending"] == 0


def relayed(b: Bench) -> bool:
    """
    Every post relayed, and no copy being sent: at the shipped sender rate
    copies wait in the outbox (queued) as in production, and that is idle.
    """
    return pending(b) == 0 and b.counts()["sending"] == 0


# -- (a) accept rate -------------------------------------------------------------
def smtp_source(port: int, n: int, sessions: int, size: int, sender: str, rcpt: str,
                log: Path) -> tuple[float, list[str]]:
    argv = postfix_tool("smtp-source") + [
        "-s", str(sessions), "-m", str(n), "-l", str(size), "-f", sender, "-t", rcpt,
        "-M", "client.example.edu", f"127.0.0.1:{port}"]
    t0 = time.monotonic()
    done = subprocess.run(argv, env=postfix_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    seconds = time.monotonic() - t0
    output = done.stdout.decode(errors="replace").splitlines()
    with open(log, "a") as f:
        f.write(" ".join(argv) + f"\n# exit {done.returncode}, {seconds:.2f}s\n")
        f.write("\n".join(output) + "\n")
    if done.returncode != 0:
        output.append(f"exit status {done.returncode}")
    return seconds, output


def stored(b: Bench, which: str) -> tuple[int, int]:
    messages, recipients = (("inbound_messages", "inbound_recipients") if which != REFERENCE
                            else ("bench_ref_messages", "bench_ref_recipients"))
    return (b.sql(f"SELECT count(*) FROM {messages}")[0][0],
            b.sql(f"SELECT count(*) FROM {recipients}")[0][0])


def accept_round(b: Bench, which: str, port: int, args, sender: str, rcpt: str,
                 pids: dict[str, int]) -> dict:
    """
    One smtp-source burst against `which` (pids: "server", "pg", "dns").
    The relay processor runs all along; its drain rate = recipient rows /
    time from smtp-source's start until the last row is done.
    """
    emaild = which != REFERENCE
    if which == AUTH_ON_LIFTED:
        # the copies a shipped-rate round left queued are sent first, not
        # during (and counted in) this burst
        wait_for(lambda: processor_idle(b), 900, 0.5, "the sender to empty the outbox")
    else:
        wait_for(lambda: relayed(b), 900, 0.5, "the relay processor to drain")
    busy = wait_quiet(max_wait=args.quiet_wait)
    before = stored(b, which)
    first_id = b.sql("SELECT coalesce(max(id), 0) FROM inbound_messages")[0][0]
    spy = None
    if emaild and args.py_spy:
        spy_file = b.dir / f"py-spy-{label(which)}-{len(args.spied) + 1}.txt"
        spy = b.spawn([str(Path(python()).parent / "py-spy"), "record", "--pid",
                       str(pids["server"]), "--rate", "250", "--idle", "--nonblocking",
                       "--format", "raw",
                       "-o", str(spy_file)], log=b.dir / "py-spy.log")
        time.sleep(1.0)  # py-spy attached
    cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.monotonic()
    seconds, output = smtp_source(port, args.messages, args.sessions, args.size, sender, rcpt,
                                  b.dir / f"smtp-source-{label(which)}.log")
    cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
    if spy is not None:
        os.kill(spy.pid, signal.SIGINT)
        spy.wait(60)
        args.spied.append((which, spy_file))
    after = stored(b, which)
    backlog = pending(b) if emaild else 0
    messages, recipients = after[0] - before[0], after[1] - before[1]
    drained = seconds
    if emaild and backlog:
        wait_for(lambda: pending(b) == 0, 900, 0.02, "the relay processor to drain")
        drained = time.monotonic() - t0
    # CPU from the burst's start until the last post is relayed: accepting
    # and relaying each post (its copy written by the sender too, if it got to it)
    cpu2 = {k: cpu_seconds(p) for k, p in pids.items()}
    # what the stored messages say about their sender (auth on: dmarc=pass on every one)
    passed = b.sql("SELECT count(*) FROM inbound_messages WHERE id > %s"
                   " AND authentication LIKE '%%dmarc=pass%%'", (first_id,))[0][0] if emaild else 0
    # transactions: the group commits that stored the posts, the relay's
    # batches that relayed them (each stamps its transaction's start time)
    commits = b.sql("SELECT count(DISTINCT received_at) FROM inbound_messages WHERE id > %s",
                    (first_id,))[0][0] if emaild else 0
    batches = b.sql("SELECT count(DISTINCT processed_at) FROM inbound_recipients"
                    " WHERE message_id > %s", (first_id,))[0][0] if emaild else 0
    errors = [line for line in output if re.search(r"error|fatal|warning|exit status", line,
                                                    re.I)]
    per_post = 1000 / max(messages, 1)
    return {"server": which, "seconds": seconds, "stored": messages,
            "recipients": recipients, "ok": messages == args.messages == recipients,
            "rate": messages / seconds, "backlog": backlog, "busy": busy,
            "drain rate": recipients / drained if emaild else 0.0,
            "drain seconds": drained, "dmarc pass": passed,
            "commits": commits, "batches": batches,
            "errors": errors,
            "server cpu": cpu1["server"] - cpu0["server"], "pg cpu": cpu1["pg"] - cpu0["pg"],
            "dns cpu": cpu1["dns"] - cpu0["dns"],
            "server ms": (cpu1["server"] - cpu0["server"]) * per_post,
            "pg ms": (cpu1["pg"] - cpu0["pg"]) * per_post,
            "dns ms": (cpu1["dns"] - cpu0["dns"]) * per_post,
            "relayed server ms": (cpu2["server"] - cpu0["server"]) * per_post,
            "relayed pg ms": (cpu2["pg"] - cpu0["pg"]) * per_post}


# -- (b) fan-out -----------------------------------------------------------------
def post(port: int, sender: str, rcpt: str, n: int) -> tuple[float, int]:
    """One post by smtplib; (wall time of the 250, inbound message id)."""
    msg = EmailMessage()
    msg["From"] = f"Poster <{sender}>"
    msg["To"] = rcpt
    msg["Subject"] = f"Fan-out bench post {n}"
    msg["Message-ID"] = f"<fanout-{n}-{time.time_ns()}@students.example.edu>"
    msg.set_content("Hello group,\n\n" + "This is a post to every member.\n" * 40)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example.edu")
        code, _ = s.mail(sender)
        assert code == 250, code
        code, _ = s.rcpt(rcpt)
        assert code == 250, code
        code, reply = s.data(msg.as_bytes())
        t250 = time.time()
        assert code == 250, (code, reply)
    return t250, int(re.search(rb"queued as (\d+)", reply).group(1))


def fanout(b: Bench, port: int, member: dict, n: int, expected: int,
           quiet_wait: float) -> dict:
    wait_for(lambda: processor_idle(b), 900, 0.5, "the relay processor and sender to drain")
    busy = wait_quiet(max_wait=quiet_wait)
    t250, message_id = post(port, member["email"], member["reply_address"], n)
    query = ("SELECT p.id, p.copies, extract(epoch FROM p.created_at - m.received_at)"
             " FROM group_posts p JOIN inbound_recipients r ON r.id = p.inbound_id"
             " JOIN inbound_messages m ON m.id = r.message_id WHERE m.id = %s")
    row = wait_for(lambda: b.sql(query, (message_id,)), 120, 0.005, "the post's fan-out")
    seen = time.time()
    post_id, copies, db_seconds = row[0]
    group_id = b.sql("SELECT group_id FROM group_posts WHERE id = %s", (post_id,))[0][0]
    rows = b.sql("SELECT count(*) FROM outbox WHERE batch = %s",
                 (f"group {group_id} post {post_id}",))[0][0]
    return {"post": n, "latency": seen - t250, "db": float(db_seconds), "copies": copies,
            "outbox rows": rows, "ok": copies == rows == expected, "busy": busy}


# -- profile ---------------------------------------------------------------------
def profile_run(b: Bench, args, sender: str, rcpt: str, dns_port: int) -> str:
    port = free_port()
    config = b.config("profile.toml", smtp_port=port, transport="maildir",
                      rate=100000.0, burst=1000.0)
    lift_limits(config)
    use_dns(config, dns_port)
    prof = b.dir / "daemon.prof"
    log = b.dir / "daemon-profile.log"
    proc = b.spawn(twistd() + ["-n", "--pidfile=", "--profile", str(prof), "--profiler",
                               "cprofile", "--savestats", "emaild", "--config", str(config)],
                   log=log, cwd=b.dir)
    wait_for(lambda: b"emaild ready" in log.read_bytes(), 60, 0.05, "the profiled daemon")
    wait_for(lambda: processor_idle(b), 900, 0.5, "the relay processor to drain")
    wait_quiet(max_wait=args.quiet_wait)
    seconds, _ = smtp_source(port, args.messages, args.sessions, args.size, sender, rcpt,
                             b.dir / "smtp-source-profile.log")
    wait_for(lambda: processor_idle(b), 900, 0.5, "the relay processor to drain")
    b.end(proc, timeout=60)
    wait_for(lambda: prof.exists() and prof.stat().st_size > 0, 30, 0.2, "the profile")
    return (f"profiled daemon: {args.messages} messages in {seconds:.2f}s "
            f"({args.messages / seconds:.0f}/s under the profiler); profile kept as {prof}\n"
            + cprofile_summary(prof))


# -- main ------------------------------------------------------------------------
def label(which: str) -> str:
    """A case's name as a file name part."""
    return re.sub(r"[^a-z0-9]+", "-", which.lower()).strip("-")


def print_round(r: dict) -> None:
    emaild = r["server"] != REFERENCE
    print(f"  round {r['round']} {r['server']:8}: {r['stored']} stored in "
          f"{r['seconds']:.2f}s = {r['rate']:.0f}/s"
          f"{'' if r['ok'] else '  (COUNT MISMATCH)'}"
          + (f"; backlog {r['backlog']} ({r['backlog'] / max(r['stored'], 1):.1%}), drained "
             f"in {r['drain seconds']:.2f}s = {r['drain rate']:.0f}/s; dmarc=pass "
             f"{r['dmarc pass']}; {r['stored'] / max(r['commits'], 1):.1f} posts per group "
             f"commit, {r['recipients'] / max(r['batches'], 1):.1f} rows per relay batch"
             if emaild else "")
          + f"; cpu ms/post server {r['server ms']:.2f} pg {r['pg ms']:.2f} dns "
          f"{r['dns ms']:.3f}"
          + (f"; until drained: server {r['relayed server ms']:.2f} pg "
             f"{r['relayed pg ms']:.2f} ms/post" if emaild else "")
          + f"; machine {r['busy']:.0%} busy before"
          + (f"; {len(r['errors'])} error lines, e.g. {r['errors'][0]}" if r["errors"] else ""),
          flush=True)


def summary(rounds: list[dict], cases: list[str], args) -> None:
    ref = {r["round"]: r for r in rounds if r["server"] == REFERENCE}
    print(table(["case", "round", "seconds", "stored", "msgs/s", "x aiosmtpd", "daemon ms/post",
                 "pg ms/post", "dns ms/post", "backlog", "drain/s", "busy before", "counts"],
                [[r["server"], r["round"], f"{r['seconds']:.2f}", r["stored"], f"{r['rate']:.0f}",
                  f"{r['rate'] / ref[r['round']]['rate']:.2f}" if r["round"] in ref else "",
                  f"{r['server ms']:.2f}", f"{r['pg ms']:.2f}", f"{r['dns ms']:.3f}",
                  f"{r['backlog']} ({r['backlog'] / max(r['stored'], 1):.1%})"
                  if r["server"] != REFERENCE else "",
                  f"{r['drain rate']:.0f}" if r["server"] != REFERENCE else "",
                  f"{r['busy']:.0%}",
                  "ok" if r["ok"] else "MISMATCH"]
                 for c in cases for r in rounds if r["server"] == c]))
    print()
    med = {c: median([r["rate"] for r in rounds if r["server"] == c]) for c in cases}
    for c in cases:
        mine = [r for r in rounds if r["server"] == c]
        line = (f"{c:8}: median {med[c]:.0f} msgs/s, daemon "
                f"{median([r['server ms'] for r in mine]):.2f} ms/post, PostgreSQL "
                f"{median([r['pg ms'] for r in mine]):.2f} ms/post")
        if c != REFERENCE:
            drain = median([r["drain rate"] for r in mine])
            worst = max(r["backlog"] / max(r["stored"], 1) for r in mine)
            line += (f"; until drained (accept + relay) daemon "
                     f"{median([r['relayed server ms'] for r in mine]):.2f}, PostgreSQL "
                     f"{median([r['relayed pg ms'] for r in mine]):.2f} ms/post")
            line += (f"; drain {drain:.0f}/s; largest backlog at the end of a burst "
                     f"{worst:.1%}; drain >= accept and backlog < 5%: "
                     f"{'met' if drain >= 0.99 * med[c] and worst < 0.05 else 'MISSED'}")
        if REFERENCE in med and c != REFERENCE:
            per_round = [r["rate"] / ref[r["round"]]["rate"] for r in mine if r["round"] in ref]
            line += (f"; x aiosmtpd: ratio of medians {med[c] / med[REFERENCE]:.2f}, per round "
                     + ", ".join(f"{x:.2f}" for x in per_round))
            if c in (AUTH_ON, AUTH_ON_LIFTED):
                line += (f"; target >= 1.5x "
                         f"{'met' if med[c] >= 1.5 * med[REFERENCE] else 'MISSED'}")
        print(line)
    on = [r for r in rounds if r["server"] in (AUTH_ON, AUTH_ON_LIFTED)]
    if on:
        print(f"auth on: every stored post has dmarc=pass: "
              f"{'yes' if all(r['dmarc pass'] == r['stored'] for r in on) else 'NO'}")
    ok = all(r["ok"] and not r["errors"] for r in rounds)
    print(f"(a) every message stored, no errors: {'yes' if ok else 'NO'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1000 messages, 1 round, 100 members, 1 post")
    parser.add_argument("--messages", type=int)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048, help="smtp-source -l (body bytes)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--members", type=int)
    parser.add_argument("--posts", type=int)
    parser.add_argument("--pool", type=int, default=4,
                        help="[database] pool_size, and the reference's pool (default 4)")
    parser.add_argument("--only", choices=("accept", "fanout"))
    parser.add_argument("--no-reference", action="store_true",
                        help="emaild's rounds only (accept and drain rates), no aiosmtpd")
    parser.add_argument("--no-auth-off", action="store_true",
                        help="skip the 'authentication off' daemon's rounds")
    parser.add_argument("--dns-ttl", type=int, default=300,
                        help="TTL of the DNS records (0: the daemon caches none; "
                             "empty answers are still cached for the zone's 60 s)")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="seconds to wait for a quiet machine before each measurement")
    parser.add_argument("--sender-rate", choices=("both", "shipped", "lifted"), default="both",
                        help="the outbound sender during the auth-on bursts: the shipped default"
                             " [relay] rate (14/s; copies wait in the outbox), lifted to"
                             " 100000/s (every copy written to the maildir during the burst),"
                             " or both side by side (default)")
    parser.add_argument("--py-spy", action="store_true",
                        help="sample each emaild burst's daemon with py-spy and show where its"
                             " time went (accept, relay, sender)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the state dir")
    args = parser.parse_args()
    args.messages = args.messages or (1000 if args.quick else 10000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.members = args.members or (100 if args.quick else 1000)
    args.posts = args.posts or (1 if args.quick else 3)
    args.spied = []

    with Bench("inbound", keep=args.keep) as b:
        dns_proc, dns_port = start_dns(b, args.dns_ttl)
        port = free_port()
        # the sender at the shipped default rate ([relay] rate not set), and lifted
        config = b.config("inbound.toml", smtp_port=port, transport="maildir")
        lifted = b.config("inbound-lifted.toml", smtp_port=port, transport="maildir",
                          rate=100000.0, burst=1000.0)
        for path in (config, lifted):
            if args.pool != 4:
                path.write_text(path.read_text().replace(
                    "[http]", f"pool_size = {args.pool}\n[http]"))
            lift_limits(path)
            use_dns(path, dns_port)
        pair = import_group(b, config, "pair", 2)
        big = import_group(b, config, "big", args.members) if args.only != "accept" else []
        sender, rcpt = pair[0]["email"], pair[0]["reply_address"]
        pg_pid = b.postmaster_pid()
        print(f"state dir {b.dir}; emaild smtp on 127.0.0.1:{port}; DNS on 127.0.0.1:{dns_port}"
              f" (TTL {args.dns_ttl}s)", flush=True)

        rounds = []
        cases = ([AUTH_ON] if args.sender_rate != "lifted" else []) \
            + ([AUTH_ON_LIFTED] if args.sender_rate != "shipped" else []) \
            + ([] if args.no_auth_off else [AUTH_OFF]) \
            + ([] if args.no_reference else [REFERENCE])
        if args.only != "fanout":
            ref_port = free_port()
            reference = None if args.no_reference else start_reference(b, ref_port, args.pool)
            cmd = (f"smtp-source -s {args.sessions} -m {args.messages} -l {args.size} "
                   f"-f {sender} -t {rcpt} -M client.example.edu 127.0.0.1:PORT")
            print(f"(a) {cmd}", flush=True)
            for i in range(args.rounds):
                # interleaved: each round starts with the next case
                for which in cases[i % len(cases):] + cases[:i % len(cases)]:
                    # a fresh daemon per emaild round, so that only one relay processor runs
                    server = reference if which == REFERENCE else start_emaild(
                        b, lifted if which == AUTH_ON_LIFTED else config, which)
                    pids = {"server": server.pid, "pg": pg_pid, "dns": dns_proc.pid}
                    r = accept_round(b, which, ref_port if which == REFERENCE else port, args,
                                     sender, rcpt, pids)
                    if which != REFERENCE:
                        # nothing in flight for a stopped daemon; at the shipped
                        # rate the copies still queued wait for the next daemon
                        wait_for(lambda: relayed(b), 900, 0.5, "the daemon to go idle")
                        b.end(server)
                    r["round"] = i + 1
                    rounds.append(r)
                    print_round(r)
            if reference is not None:
                b.end(reference)
            relay_states = dict(b.sql("SELECT state, count(*) FROM inbound_recipients"
                                      " GROUP BY state"))
            print(f"  emaild's recipients after all rounds: {relay_states}", flush=True)

        posts = []
        if args.only != "accept":
            # the fan-out waits for an empty outbox: the lifted sender empties it
            daemon = start_emaild(b, lifted, AUTH_ON_LIFTED)
            print(f"(b) fan-out to a group of {args.members} (authentication on)", flush=True)
            for i in range(args.posts):
                poster = big[(i * 37) % len(big)]
                r = fanout(b, port, poster, i + 1, args.members - 1, args.quiet_wait)
                posts.append(r)
                print(f"  post {i + 1}: 250 -> {r['outbox rows']} outbox rows committed in "
                      f"{r['latency']:.3f}s (db: received_at -> post created_at "
                      f"{r['db']:.3f}s){'' if r['ok'] else '  (COUNT MISMATCH)'}", flush=True)
            wait_for(lambda: processor_idle(b), 900, 0.5, "the daemon to go idle")
            b.end(daemon)

        profile = profile_run(b, args, sender, rcpt, dns_port) if args.profile else ""
        b.end(dns_proc)
        dns_queries = dns_proc.stdout.read().decode().strip().splitlines()[-1:]

    print()
    busy = [r["busy"] for r in rounds + posts]
    quiet = all(x < 0.15 for x in busy)
    print(("quiet machine: every measurement started with the CPUs < 15% busy" if quiet else
           f"NOT a quiet machine: measurements started with the CPUs up to {max(busy):.0%} "
           f"busy (other work); read ratios from the same round, not absolute rates")
          if busy else "")
    if rounds:
        summary(rounds, cases, args)
        print(f"DNS server: {' '.join(dns_queries) or '?'} in all (the daemon caches answers "
              f"for their TTL, {args.dns_ttl}s)")
    if posts:
        lat = median([p["latency"] for p in posts])
        print(f"(b) fan-out to {args.members - 1}: median {lat:.3f}s (posts: "
              + ", ".join(f"{p['latency']:.3f}" for p in posts) + "); db-side median "
              f"{median([p['db'] for p in posts]):.3f}s; all rows: "
              f"{'yes' if all(p['ok'] for p in posts) else 'NO'}; target (< 2 s) "
              f"{'met' if lat < 2 else 'MISSED'}")
    for which, spy_file in args.spied:
        print()
        print(f"{which}: " + profile_shares(spy_file))
    if profile:
        print()
        print(profile)


if __name__ == "__main__":
    reexec_in_venv()
    main()
