"""
A loopback SMTP relay that meters accepted recipients like Amazon SES: a
token bucket of rate R recipients/second and capacity B (default B = R, one
second's burst), answering

    454 Throttling failure: Maximum sending rate exceeded.

to a message beyond it (a refused message takes no token).  It logs every
answer to a message, one line each, flushed at once:

    <unix time> <code> <envelope sender> <Message-ID>

Built on tests/relay.py (Twisted's ESMTP, with PIPELINING).  --rate 0 means
no limit (a recording sink, used by the kill -9 benchmark).

    python bench/throttling_relay.py --port 2526 --rate 14 --log relay.log
    python bench/throttling_relay.py --meter-at rcpt ...   # 454 at RCPT instead of after DATA
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor  # noqa: E402

from tests import relay as relay_module  # noqa: E402
from tests.relay import Relay  # noqa: E402

THROTTLED = (454, "Throttling failure: Maximum sending rate exceeded.")
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.I | re.M)


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.at = burst, clock()

    def take(self) -> bool:
        """One token if there is one (True), else False and nothing taken."""
        if self.rate <= 0:
            return True
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Meter:
    def __init__(self, bucket: TokenBucket, log, meter_at: str):
        self.bucket = bucket
        self.log = log
        self.meter_at = meter_at
        self.answers = {}

    def _write(self, code: int, sender: str, message_id: str) -> None:
        self.log.write(f"{time.time():.6f} {code} {sender or '<>'} {message_id}\n")
        self.log.flush()
        self.answers[code] = self.answers.get(code, 0) + 1

    def rcpt(self, recipient: str):
        if self.meter_at == "rcpt" and not self.bucket.take():
            self._write(THROTTLED[0], "-", "-")
            return THROTTLED
        return None

    def data(self, message):
        match = _MESSAGE_ID.search(message.data.split(b"\r\n\r\n", 1)[0])
        message_id = match.group(1).decode("ascii", "replace") if match else "-"
        message.data = b""  # keep the relay's record small
        if self.meter_at == "data" and not self.bucket.take():
            self._write(THROTTLED[0], message.mail_from, message_id)
            return THROTTLED
        self._write(250, message.mail_from, message_id)
        return (250, "2.0.0 Ok: queued")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--rate", type=float, default=14.0, help="recipients/s; 0: no limit")
    parser.add_argument("--burst", type=float, default=None, help="bucket capacity (default: rate)")
    parser.add_argument("--meter-at", choices=("data", "rcpt"), default="data")
    parser.add_argument("--log", required=True)
    args = parser.parse_args()

    bucket = TokenBucket(args.rate, args.burst if args.burst is not None else max(args.rate, 1.0))
    meter = Meter(bucket, open(args.log, "a"), args.meter_at)
    relay = Relay(reactor, rcpt_policy=meter.rcpt, data_policy=meter.data, pipelining=True)
    relay.messages = _Forgetful()
    if args.port:  # Relay.start() takes an ephemeral port
        port = reactor.listenTCP(args.port, relay_module._Factory(relay), interface="127.0.0.1")
        relay.port = port.getHost().port
    else:
        relay.start()
    print(f"listening on {relay.port}", flush=True)
    reactor.run()
    print(f"answers: {meter.answers}", file=sys.stderr)


class _Forgetful:
    """Stands in for the relay's list of received messages, without keeping them."""

    n = 0

    def append(self, item):
        self.n += 1

    def __len__(self):
        return self.n


if __name__ == "__main__":
    main()
