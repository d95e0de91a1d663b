"""
Measuring the delaying proxy (bench/delay_proxy.py) and what goes through
it: a ping-pong over a raw socket (the round trip the proxy really gives,
no SMTP library in the way), the proxy's own check against an echo server,
and the summary of a proxy's chunk trace.

    python bench/delay_proxy.py --check 1,10     # runs check() below
"""

from __future__ import annotations

import collections
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

PROXY = Path(__file__).resolve().parent / "delay_proxy.py"


def ping_pong(port: int, count: int = 200, line: bytes = b"NOOP\r\n",
              host: str = "127.0.0.1", pause: float = 0.0) -> list[float]:
    """
    The round-trip times (seconds) of C{count} one-line exchanges over one
    connection to C{port}: send C{line}, wait for the one-line answer (an
    SMTP server's greeting is read first when C{line} is NOOP).  Blocking;
    no SMTP library in the way.
    """
    times = []
    with socket.create_connection((host, port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = s.makefile("rb")
        try:
            if line.startswith(b"NOOP"):
                reader.readline()  # the greeting
            for _ in range(count):
                t0 = time.perf_counter()
                s.sendall(line)
                if not reader.readline():
                    raise ConnectionError("the server closed the connection")
                times.append(time.perf_counter() - t0)
                if pause:
                    time.sleep(pause)
            if line.startswith(b"NOOP"):
                s.sendall(b"QUIT\r\n")
                reader.readline()
        finally:
            reader.close()
    return times


def summarise_trace(path, rtt: float) -> str:
    """
    Where each connection's time went, from a trace (L{DelayProxy.trace}):
    per turn (the client sending after it heard from the server), the
    client's turnaround (the server's bytes released to it -> its next bytes
    at the proxy), the server's (the client's bytes released to it -> its
    answer at the proxy), and how far each release was from its chunk's
    arrival + RTT/2.  Times in ms, over every connection.  For SMTP: how
    many times a client ended a message's data without the next message's
    envelope behind it (RFC 2920 lets it send both at once; each such turn
    is a round trip without a message, but a connection's last message is
    always one).
    """
    half = rtt / 2
    arrived: dict[tuple[str, str], collections.deque] = collections.defaultdict(
        collections.deque)
    released: dict[tuple[str, str], float] = {}
    last_in: dict[str, str] = {}
    late, client, server, cycle = [], [], [], []
    writes_per_turn: list[int] = []
    turn_start: dict[str, float] = {}
    writes: dict[str, int] = collections.Counter()
    data_alone = 0
    with open(path, "rb") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5:
                continue
            t, pair, direction, event = float(fields[0]), fields[1].decode(), \
                fields[2].decode(), fields[3]
            if event == b"in":
                arrived[pair, direction].append(t)
                if direction == "c>s" and len(fields) > 6 and fields[6] == b"d":
                    data_alone += 1
                if direction == "c>s":
                    writes[pair] += 1
                    if last_in.get(pair) != "c>s":  # a new turn
                        if ("s>c", pair) in released:
                            client.append(t - released["s>c", pair])
                        if pair in turn_start:
                            cycle.append(t - turn_start[pair])
                            writes_per_turn.append(writes[pair] - 1)
                        turn_start[pair] = t
                        writes[pair] = 1
                elif last_in.get(pair) == "c>s" and ("c>s", pair) in released:
                    server.append(t - released["c>s", pair])
                last_in[pair] = direction
            else:
                queue = arrived[pair, direction]
                if queue:
                    late.append(t - queue.popleft() - half)
                released[direction, pair] = t

    def ms(values):
        if not values:
            return "-"
        values = sorted(values)
        return (f"median {statistics.median(values) * 1000:.2f}"
                f" mean {statistics.fmean(values) * 1000:.2f}"
                f" p90 {values[len(values) * 9 // 10] * 1000:.2f}"
                f" p99 {values[len(values) * 99 // 100] * 1000:.2f}")

    return (f"{len(cycle)} turns (nominal RTT {rtt * 1000:g} ms); turn to turn: {ms(cycle)};"
            f" client turnaround: {ms(client)}; server turnaround: {ms(server)};"
            f" release - (arrival + RTT/2): {ms(late)}; client writes per turn (median):"
            f" {statistics.median(writes_per_turn) if writes_per_turn else '-'};"
            f" chunks ending a message's data with no next envelope: {data_alone}"
            f" (a connection's last message is one)")


def _echo_server() -> int:
    """A line echo server on 127.0.0.1 in threads of this process: its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def serve(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept():
        while True:
            conn, _ = server.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


def check(rtts_ms: list[float], count: int) -> None:
    """
    Measure this proxy's own round trip: a ping-pong of one-line messages
    over one connection, straight to an echo server and through the proxy
    (run as a separate process, as the benchmarks run it) at each RTT.
    """
    echo = _echo_server()

    def report(label, times):
        ms = sorted(t * 1000 for t in times)
        print(f"{label:>18}: median {statistics.median(ms):7.3f} ms  mean"
              f" {statistics.fmean(ms):7.3f}  p10 {ms[len(ms) // 10]:7.3f}"
              f"  p90 {ms[len(ms) * 9 // 10]:7.3f}  max {ms[-1]:7.3f}", flush=True)

    report("straight", ping_pong(echo, count, b"ping\n", pause=0.002))
    for rtt in rtts_ms:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, str(PROXY), "--listen", str(port), "--target",
                                 f"127.0.0.1:{echo}", "--rtt-ms", str(rtt)],
                                stdout=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            report(f"proxy at {rtt:g} ms", ping_pong(port, count, b"ping\n"))
        finally:
            proc.terminate()
            proc.wait(10)
