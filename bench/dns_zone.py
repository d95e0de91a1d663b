"""
An authoritative DNS server on 127.0.0.1 for the inbound benchmark, in its
own process (so its CPU is counted apart from the daemon's): twisted.names
serving one zone from memory over UDP and TCP on one free port, the
tests' L{tests.dnsserver.ZoneServer}.

    python bench/dns_zone.py example.edu students.example.edu="v=spf1 ip4:127.0.0.1 -all" \
        _dmarc.students.example.edu="v=DMARC1; p=reject" [--ttl 300]

Every NAME=TEXT argument is a TXT record.  Prints "listening on PORT" once
it answers, then runs until SIGTERM; prints the number of queries it got.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import reactor  # noqa: E402
from twisted.names import dns  # noqa: E402

from tests.dnsserver import ZoneServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("zone")
    parser.add_argument("records", nargs="*", metavar="NAME=TEXT")
    parser.add_argument("--ttl", type=int, default=300, help="TTL of every record (seconds)")
    args = parser.parse_args()
    records: dict[str, list] = {}
    for item in args.records:
        name, _, text = item.partition("=")
        data = text.encode("ascii")
        records.setdefault(name, []).append(
            dns.Record_TXT(*[data[i:i + 255] for i in range(0, len(data), 255)], ttl=args.ttl))
    server = ZoneServer(args.zone, records)
    port = server.start()

    def stop(signum, frame):
        print(f"{len(server.queries)} queries", flush=True)
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop)
    print(f"listening on {port}", flush=True)
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    main()
