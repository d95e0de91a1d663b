"""
CPU per post of the relay's reading (parse, check, scrub: read_posts) and
of composing one copy (build_copy), on two kinds of post: one like
smtp-source's (`-l 2048`: 26 lines of 80 characters, From/To/Date/
Message-Id, emaild's Received) and one like real mail (multipart/alternative text + HTML,
quoted-printable and base64, Received lines), for a group of 2 members (the
accept benchmark's) and of 1,000.  Pure Python, no daemon, no database:

    PYTHONPATH=$PWD .venv/bin/python bench/relay_read.py [--seconds 2]

prints microseconds per post (best of 9 repeats; a loaded machine moves
these less than wall-clock throughput, but compare runs taken together).
"""

from __future__ import annotations

import argparse
import base64
import quopri
import time

from emaild.inbound.reading import PostToRead, read_posts
from emaild.inbound.rewrite import build_copy

DOMAIN = "relay.example"


def smtp_source_post(n: int) -> bytes:
    # as the relay reads what `smtp-source -l 2048` sends: emaild's Received
    # header, smtp-source's four headers (no Subject) and 26 lines of 80
    body = b"".join(b"%d" % (i % 10) + b"X" * 77 + b"\r\n" for i in range(1, 27))
    return (b"Received: from vm ([127.0.0.1])\r\n\tby mx.relay.example (emaild) with ESMTP;\r\n"
            b"\tWed, 02 Dec 2026 04:33:51 +0000\r\n"
            b"From: <m0@members.example>\r\nTo: <reply+abc@relay.example>\r\n"
            b"Date: Wed,  2 Dec 2026 04:33:51 +0000 (UTC)\r\n"
            b"Message-Id: <%d.0003.0000@vm>\r\n\r\n" % n) + body


def real_post(n: int) -> bytes:
    text = ("Hello all,\n\nthe notes for Thursday are up; see the wiki page at "
            "https://wiki.example/notes?week=3&lang=en for the details.\n\n"
            "Caf\u00e9 at 10:00 \u2014 everyone welcome.\n\n-- \nAda\n") * 3
    html = ("<html><body><p>Hello all,</p><p>the notes for Thursday are up; see "
            "<a href=\"https://wiki.example/notes?week=3&amp;lang=en\">the wiki</a>.</p>"
            "<p>Caf&eacute; at 10:00 &mdash; everyone welcome.</p></body></html>\n") * 3
    qp = quopri.encodestring(text.encode("utf-8"), quotetabs=False).replace(b"\n", b"\r\n")
    b64 = base64.encodebytes(html.encode("utf-8")).replace(b"\n", b"\r\n")
    return (b"Received: from client.example (client.example [192.0.2.7])\r\n"
            b"\tby mx.relay.example with ESMTPS id 4Abc; Wed, 2 Dec 2026 04:00:00 +0000\r\n"
            b"Received: from [10.0.0.5] by client.example; Wed, 2 Dec 2026 03:59:59 +0000\r\n"
            b"From: Ada Lovelace <m0@members.example>\r\nTo: <reply+abc@relay.example>\r\n"
            b"Date: Wed, 2 Dec 2026 04:00:00 +0000\r\n"
            b"Message-ID: <%d.real@client.example>\r\nSubject: Re: notes for week %d\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" % (n, n)
            + qp + b"\r\n--b1\r\nContent-Type: text/html; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"\r\n--b1--\r\n")


def members(size: int) -> dict[int, tuple[tuple[str, str], ...]]:
    return {1: tuple((f"m{i}@members.example", f"Member {i}") for i in range(size))}


def per_post(fn, seconds: float) -> float:
    best = float("inf")
    for _ in range(9):
        n, start = 0, time.process_time()
        while time.process_time() - start < seconds / 9:
            fn(n)
            n += 1
        best = min(best, (time.process_time() - start) / n)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    for label, make in (("smtp-source", smtp_source_post), ("real mail", real_post)):
        posts = [make(i) for i in range(64)]
        for size in (2, 1000):
            group = members(size)

            def read(n, posts=posts, group=group):
                item = PostToRead(posts[n % 64], "m0@members.example", DOMAIN, "Member 0", 1)
                (read,) = read_posts([item], group)
                assert read.prepared is not None, read
                return read.prepared

            prepared = read(0)

            def copy(n, prepared=prepared):
                return build_copy(
                    prepared, author=prepared.author, group_name="Group",
                    reply_address="reply+x1@relay.example", message_id="<a1@relay.example>",
                    in_reply_to=[], references=[], list_id="group-1.relay.example",
                    unsubscribe_url="https://relay.example/u/abcdef",
                    unsubscribe_mailto="mailto:unsubscribe+abcdef@relay.example",
                    loop_value=DOMAIN)

            print(f"{label:12} {size:5} members: read_post {per_post(read, args.seconds):7.1f} us"
                  f"   build_copy {per_post(copy, args.seconds / 2):6.1f} us")


if __name__ == "__main__":
    main()
