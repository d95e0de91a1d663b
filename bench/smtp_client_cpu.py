"""
CPU per message of the SMTP client protocol alone: no sockets, no database.
SMTPClientProtocol runs over a StringTransport on a Clock against scripted
relay replies (PIPELINING on: one reply chunk per message, as from a real
relay), N messages of ~1 KB back to back.

    python bench/smtp_client_cpu.py [N] [--profile]
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from bench.common import reexec_in_venv  # noqa: E402
from emaild.outbound.smtpclient import SMTPClientProtocol  # noqa: E402
from emaild.outbound.transport import OutgoingMessage  # noqa: E402

#: the end-of-data reply of one message and the next one's MAIL, RCPT, DATA
GROUP = (b"250 2.0.0 Ok: queued as 1234\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
         b"354 End data with <CR><LF>.<CR><LF>\r\n")


def main():
    n = int(next((a for a in sys.argv[1:] if a.isdigit()), 20000))
    body = b"Subject: hello\n\n" + b"x" * 1000 + b"\n"
    proto = SMTPClientProtocol(Clock(), "relay.test", 60.0, 600.0)
    wire = StringTransport()
    proto.makeConnection(wire)
    started = Deferred.fromCoroutine(proto.start(b"client.test", None, None, None))
    proto.dataReceived(b"220 relay.test\r\n")
    proto.dataReceived(b"250-relay.test\r\n250-SIZE 10000000\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
    assert started.called
    messages = iter([OutgoingMessage(i, f"b{i}@relay.example", "student@example.edu", body)
                     for i in range(n)])
    done = []

    def ready():
        message = next(messages, None)
        if message is not None:
            proto.send(message, done.append)

    proto.on_ready = ready

    def run():
        proto.send(next(messages), done.append)
        proto.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n")
        while len(done) < n - 1:
            wire.clear()
            proto.dataReceived(GROUP)

    cpu0 = time.process_time()
    if "--profile" in sys.argv:
        profile = cProfile.Profile()
        profile.runcall(run)
        pstats.Stats(profile).sort_stats("tottime").print_stats(12)
    else:
        run()
    cpu = time.process_time() - cpu0
    print(f"{n} messages: {cpu / n * 1e6:.1f} us of CPU per message (protocol only)")


if __name__ == "__main__":
    reexec_in_venv()
    main()
