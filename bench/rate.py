"""
(a) Rate accuracy: the real daemon (twistd -n emaild) against a relay that
meters 14 recipients/s with a one-second bucket (bench/throttling_relay.py)
and answers 454 to anything faster.

Scenarios, each with a fresh relay (bucket full) and outbox, N messages
queued before the daemon starts:
  defaults  daemon with no rate or burst in its configuration: emaild's
            shipped defaults (rate 14, burst half of it: 7)
  burst14   daemon rate=14 burst=14 (--burst N: "burstN"): the same bucket as
            the relay's (emaild's default before 8bed427), no headroom for
            network/claim latency jitter
  faster    daemon rate=20 burst=20: the relay must throttle it; the sender
            should back off and still send everything

Measured from the relay's accept log: accepted recipients per second in a
--window second window starting --warmup seconds after the first accept,
inter-arrival times in that window, and every 454.

    python bench/rate.py [--quick] [--burst 14] [--only defaults|burst|faster]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    Bench,
    Relay,
    median,
    percentile,
    reexec_in_venv,
    table,
    wait_for,
    wait_quiet,
    write_csv,
)

RELAY_RATE = 14.0
#: emaild's [relay] rate default, what the "defaults" scenario runs at
DEFAULT_RATE = 14.0


def _limits(rate: float | None, burst: float | None) -> str:
    return " ".join(f"{k}={'default' if v is None else f'{v:g}'}"
                    for k, v in (("rate", rate), ("burst", burst)))


def run(b: Bench, name: str, rate: float | None, burst: float | None, n: int, warmup: float,
        window: float) -> dict:
    """rate/burst None: leave them out of the configuration (emaild's defaults)."""
    label = _limits(rate, burst)
    b.reset_outbox()
    relay = Relay(b, rate=RELAY_RATE, name=f"relay-{name}")
    limits = {k: v for k, v in (("rate", rate), ("burst", burst)) if v is not None}
    config = b.config(f"{name}.toml", port=relay.port, connections=4, **limits)
    rate = rate or DEFAULT_RATE
    b.enqueue(config, write_csv(b.dir / f"{name}.csv", n))
    wait_quiet()
    t_start = time.time()
    daemon = b.start_daemon(config, f"daemon-{name}.log")
    wait_for(lambda: b.terminal() >= n, timeout=n / min(rate, RELAY_RATE) * 3 + 60,
             interval=0.5, what=f"{n} messages to finish")
    elapsed = time.time() - t_start
    b.end(daemon)
    b.end(relay.proc)
    counts = b.counts()

    records = relay.records()
    accepts = [t for t, code, _, _ in records if code == 250]
    throttles = [t for t, code, _, _ in records if code == 454]
    t0 = accepts[0] + warmup
    in_window = [t for t in accepts if t0 <= t < t0 + window]
    gaps = [(y - x) * 1000 for x, y in zip(in_window, in_window[1:])]
    achieved = len(in_window) / window
    complete = accepts[-1] >= t0 + window
    return {
        "scenario": name, "daemon": label, "messages": n,
        "sent": counts["sent"], "not sent": n - counts["sent"],
        "window": f"{window:g}s{'' if complete else ' (short!)'}",
        "achieved/s": f"{achieved:.3f}",
        "vs 14/s": f"{(achieved / RELAY_RATE - 1) * 100:+.2f}%",
        "overall/s": f"{(len(accepts) - 1) / (accepts[-1] - accepts[0]):.3f}",
        "gap med ms": f"{median(gaps):.1f}", "gap p99 ms": f"{percentile(gaps, 99):.1f}",
        "454s": len(throttles),
        "454s in window": sum(1 for t in throttles if t0 <= t < t0 + window),
        "454 span s": (f"{throttles[0] - accepts[0]:.1f}..{throttles[-1] - accepts[0]:.1f}"
                       if throttles else "-"),
        "duplicates": len(accepts) - len({s for _, c, s, _ in records if c == 250}),
        "wall s": f"{elapsed:.1f}",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 messages, 10 s window")
    parser.add_argument("--burst", type=float, default=14.0,
                        help="daemon burst of the second scenario (default 14)")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--only", choices=("defaults", "burst", "faster"))
    parser.add_argument("--keep", action="store_true", help="keep the state dir")
    args = parser.parse_args()
    n = args.messages or (200 if args.quick else 1000)
    warmup, window = (2.0, 10.0) if args.quick else (5.0, 60.0)
    scenarios = [("defaults", None, None),
                 (f"burst{args.burst:g}", RELAY_RATE, args.burst),
                 ("faster", 20.0, 20.0)]
    results = []
    with Bench("rate", keep=args.keep) as b:
        for name, rate, burst in scenarios:
            if args.only in (None, name.rstrip("0123456789.")):
                print(f"running {name}: daemon {_limits(rate, burst)}, {n} messages, "
                      f"relay {RELAY_RATE:g}/s burst {RELAY_RATE:g}", flush=True)
                results.append(run(b, name, rate, burst, n, warmup, window))
    keys = list(results[0])
    print()
    print(table(["metric"] + [r["scenario"] for r in results],
                [[k] + [r[k] for r in results] for k in keys[1:]]))
    print()
    for r in results:
        if r["scenario"] != "faster":
            ok = abs(float(r["achieved/s"]) / RELAY_RATE - 1) <= 0.02 and r["454s"] == 0
            print(f"{r['scenario']}: target (within 2% of 14/s, zero 454s) "
                  f"{'met' if ok else 'MISSED'}")
        else:
            print(f"faster: every message sent: {'yes' if r['not sent'] == 0 else 'NO'}")


if __name__ == "__main__":
    reexec_in_venv()
    main()
