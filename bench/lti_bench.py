"""
LTI 1.3 launches beside LTI 1.1 launches, in the same run, against the real
daemon (twistd -n emaild, its own PostgreSQL in a temp state dir): the
daemon's CPU time per launch of each kind.

  1.1  one POST /lti/launch signed with OAuth 1.0a HMAC-SHA1 (tests/oauth1.py)
  1.3  GET /lti/login (302 + state cookie), then POST /lti/launch with an RS256
       id_token made here for the login's nonce (tests/lti13_platform.py; its
       JWKS is served by this script on 127.0.0.1 and cached by the daemon)

Each launch is a new learner (person, identity, course membership, session).
Within each round the kinds alternate in blocks of C{--block} launches (20 by
default), so the machine's background load, which moves from second to
second on a shared machine, falls on both alike; the daemon's CPU is read
from C{/proc/<pid>/task/*/schedstat} (nanoseconds; C{/proc/<pid>/stat}
counts 10 ms ticks, too coarse for a block).
Target (from the issue): a 1.3 launch costs at most 1.5x the daemon CPU of a
1.1 launch.  "daemon ms" is CPU time of the twistd process only (PostgreSQL's
share is reported apart), the figure least disturbed by other work.

    python bench/lti_bench.py [--launches 200] [--rounds 3] [--block 20] [--profile DIR]

With C{--profile DIR}, py-spy samples the daemon during an extra round of
each kind (after the measured ones, so it does not disturb them) and writes
C{DIR/lti-1.1.txt} and C{DIR/lti-1.3.txt} (raw collapsed stacks, busy
samples only) and a per-function summary of each.
"""

from __future__ import annotations

import argparse
import collections
import http.server
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Bench,
    cpu_seconds,
    free_port,
    python,
    reexec_in_venv,
    table,
)

KEY, SECRET = "bench-consumer", "bench-consumer-secret-1"
FORM = "application/x-www-form-urlencoded"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def _request(url: str, data: bytes | None = None, headers: dict | None = None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with _opener.open(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def serve_jwks(platform) -> int:
    body = json.dumps({"keys": [k.jwk() for k in platform.keys]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Cache-Control", "max-age=3600")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1]


def write_config(b: Bench, port: int, jwks_port: int) -> Path:
    from tests.lti13_platform import CLIENT_ID, DEPLOYMENT_ID, ISSUER

    path = b.dir / "lti.toml"
    path.write_text("\n".join([
        "[paths]", f'state_dir = "{b.dir}"',
        "[database]", f'url = "{b.dsn}"',
        "[http]", f'endpoint = "tcp:{port}:interface=127.0.0.1"',
        f'public_url = "http://127.0.0.1:{port}"',
        "[smtp]", f'endpoint = "tcp:{free_port()}:interface=127.0.0.1"',
        "[digest]", "enabled = false",
        # one client makes every launch: no per-client limit (emaild.web.lti_limits)
        "[lti]", "client_rate = 0",
        "[lti.consumers]", f'{KEY} = "{SECRET}"',
        "[lti13.platforms.bench]", f'issuer = "{ISSUER}"', f'client_id = "{CLIENT_ID}"',
        f'auth_login_url = "http://127.0.0.1:{jwks_port}/auth"',
        f'auth_token_url = "http://127.0.0.1:{jwks_port}/token"',
        f'key_set_url = "http://127.0.0.1:{jwks_port}/jwks"',
        f'deployment_ids = ["{DEPLOYMENT_ID}"]',
    ]) + "\n")
    return path


def launch11(base: str, n: int) -> None:
    from tests import oauth1
    from tests.lti.test_lti import launch_fields

    fields = launch_fields(user_id=f"u11-{n}", lis_person_contact_email_primary=f"a{n}@11.test")
    params = oauth1.sign("POST", base + "/lti/launch", fields, KEY, SECRET)
    status, _, body = _request(base + "/lti/launch", oauth1.form_body(params),
                               {"Content-Type": FORM})
    if status != 303:
        raise RuntimeError(f"1.1 launch answered {status}: {body[:300]!r}")


def launch13(base: str, platform, n: int) -> None:
    from tests.lti13_platform import CLIENT_ID, DEPLOYMENT_ID, ISSUER

    query = urllib.parse.urlencode({"iss": ISSUER, "login_hint": f"h{n}", "client_id": CLIENT_ID,
                                    "target_link_uri": base + "/lti/launch",
                                    "lti_deployment_id": DEPLOYMENT_ID})
    status, headers, body = _request(base + "/lti/login?" + query)
    if status != 302:
        raise RuntimeError(f"1.3 login answered {status}: {body[:300]!r}")
    redirect = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(headers["Location"]).query))
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    platform.user = {"sub": f"u13-{n}", "name": f"Learner {n}", "email": f"a{n}@13.test"}
    token = platform.id_token(redirect["nonce"])
    data = urllib.parse.urlencode({"id_token": token, "state": redirect["state"]}).encode()
    status, _, body = _request(base + "/lti/launch", data, {"Content-Type": FORM,
                                                            "Cookie": cookie})
    if status != 303:
        raise RuntimeError(f"1.3 launch answered {status}: {body[:300]!r}")


def oncpu_seconds(pid: int) -> float:
    """
    CPU time of every thread of a process, from the scheduler's own
    accounting (nanoseconds).
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass  # a thread that just ended
    return total / 1e9


def own_frames(path: Path, top: int = 25) -> str:
    """
    The emaild functions (and, apart, the rest) that py-spy's busy samples
    were in, inclusive: what share of the daemon's CPU each one's calls cost.
    """
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(("Condition.wait", "EPollReactor.doPoll")):
            continue  # idle: the thread pool waiting, the reactor in epoll
        total += int(count)
        seen = set()
        for frame in frames:
            name = frame.split(" (")[0]
            where = frame.split(" (", 1)[-1]
            label = name + (" [emaild]" if "emaild/" in where else "")
            if label not in seen:
                seen.add(label)
                inclusive[label] += int(count)
    rows = [(label, n, f"{100 * n / total:.1f}%") for label, n in inclusive.most_common(top)]
    return f"{path} ({total} samples):\n" + table(["function (inclusive)", "samples", "share"],
                                                    rows)


def main() -> None:
    reexec_in_venv()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=200, help="launches per kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=int, default=20,
                        help="launches of one kind before the other kind's turn")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="then profile one more round of each kind with py-spy into DIR")
    args = parser.parse_args()

    from tests.lti13_platform import Platform

    platform = Platform()
    jwks_port = serve_jwks(platform)
    with Bench("lti") as b:
        port = free_port()
        daemon = b.start_daemon(write_config(b, port, jwks_port))
        base = f"http://127.0.0.1:{port}"
        postmaster = b.postmaster_pid()
        # warm up both paths (and the daemon's JWKS cache)
        for n in range(5):
            launch11(base, -1 - n)
            launch13(base, platform, -1 - n)
        results = {"1.1": [], "1.3": []}
        counter = 0
        for _ in range(args.rounds):
            spent = {kind: [0.0, 0.0, 0.0] for kind in results}
            done = 0
            while done < args.launches:
                block = min(args.block, args.launches - done)
                for kind in ("1.1", "1.3"):
                    app0, pg0 = oncpu_seconds(daemon.pid), cpu_seconds(postmaster)
                    wall0 = time.time()
                    for _ in range(block):
                        counter += 1
                        if kind == "1.1":
                            launch11(base, counter)
                        else:
                            launch13(base, platform, counter)
                    spent[kind][0] += oncpu_seconds(daemon.pid) - app0
                    spent[kind][1] += cpu_seconds(postmaster) - pg0
                    spent[kind][2] += time.time() - wall0
                done += block
            for kind, (app, pg, wall) in spent.items():
                results[kind].append((app / args.launches, pg / args.launches,
                                      wall / args.launches))
        rows = []
        for kind, samples in results.items():
            app = sorted(s[0] for s in samples)[len(samples) // 2]
            pg = sorted(s[1] for s in samples)[len(samples) // 2]
            wall = sorted(s[2] for s in samples)[len(samples) // 2]
            rows.append((kind, args.launches * args.rounds, f"{app * 1000:.2f}",
                         f"{pg * 1000:.2f}", f"{wall * 1000:.1f}"))
        print(table(["launch", "launches", "daemon ms", "pg ms", "wall ms"], rows))
        ratio = float(rows[1][2]) / float(rows[0][2]) if float(rows[0][2]) else float("inf")
        print(f"1.3 / 1.1 daemon CPU per launch: {ratio:.2f} (target: at most 1.5); per round: "
              + ", ".join(f"{b[0] / a[0]:.2f}" for a, b in zip(results["1.1"], results["1.3"])))
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for kind in ("1.1", "1.3"):
                out = args.profile / f"lti-{kind}.txt"
                spy = b.spawn([str(Path(python()).parent / "py-spy"), "record", "--pid",
                               str(daemon.pid), "--rate", "500", "--format", "raw",
                               "-o", str(out)], log=b.dir / "py-spy.log")
                time.sleep(1.0)  # py-spy attaches
                for _ in range(args.launches):
                    counter += 1
                    if kind == "1.1":
                        launch11(base, counter)
                    else:
                        launch13(base, platform, counter)
                os.kill(spy.pid, signal.SIGINT)
                spy.wait(30)
                print(own_frames(out))


if __name__ == "__main__":
    main()
