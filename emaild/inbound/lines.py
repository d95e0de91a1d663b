"""
The line handling under the inbound SMTP session: a buffer read one line at
a time, strictly in order, with line length limits, replies that count
errors, and a way to wait for the handler without reading ahead.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from emaild.inbound.syntax import printable

log = Logger()

#: longest command line, in octets including the line end (RFC 5321 allows
#: 512 for a command; ESMTP parameters make it longer)
COMMAND_LINE_LIMIT = 1000
#: longest line of a message, in octets including CRLF.  RFC 5322 says 1000;
#: real mail sometimes has longer lines, so we accept up to 16 KiB.
DATA_LINE_LIMIT = 16384


class LineSession(Protocol, TimeoutMixin):
    """
    Subclasses implement L{lineReceived} and set C{in_data} while a message
    is being read: then lines end at CRLF only (a bare LF can never end the
    message) and may be L{DATA_LINE_LIMIT} long; otherwise they end at LF
    (CR before it optional) and may be L{COMMAND_LINE_LIMIT} long.  A longer
    line is answered C{500 5.5.6} and the connection closed, whatever the
    mode: falling back to command mode inside a message would run its lines
    as commands.
    """

    #: the name in the last replies (set by the subclass)
    name = "localhost"
    #: 5xx replies allowed; one more and the session is closed
    max_errors = 20
    #: the peer, for log lines
    peer = "unknown"

    in_data = False
    _busy = False  # waiting for something before reading the next line
    _processing = False  # inside _process (so a synchronous result does not recurse)
    _paused = False
    _closing = False
    _errors = 0

    def lineReceived(self, line: bytes) -> None:
        raise NotImplementedError

    @property
    def waiting(self) -> bool:
        """Whether a L{wait} is in progress (no line is read meanwhile)."""
        return self._busy

    # -- input ------------------------------------------------------------
    def connectionMade(self):
        self._buffer = bytearray()

    def dataReceived(self, data: bytes):
        if self._closing:
            return
        self.resetTimeout()
        self._buffer += data
        self._process()

    def connectionLost(self, reason):
        self._closing = True
        self.setTimeout(None)

    def _next_line(self) -> bytes | None:
        buf = self._buffer
        if self.in_data:
            end, ending, limit = buf.find(b"\r\n"), 2, DATA_LINE_LIMIT
        else:
            end, ending, limit = buf.find(b"\n"), 1, COMMAND_LINE_LIMIT
        if (end < 0 and len(buf) >= limit) or end + ending > limit:
            self.close(500, "5.5.6 Line too long")
            return None
        if end < 0:
            return None
        line = bytes(buf[:end])
        del buf[: end + ending]
        if not self.in_data and line.endswith(b"\r"):
            line = line[:-1]
        return line

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            while not self._busy and not self._closing:
                line = self._next_line()
                if line is None:
                    break
                self.lineReceived(line)
        finally:
            self._processing = False
        # hold the client back while waiting; let it go on after
        want_pause = self._busy and not self._closing
        if want_pause != self._paused:
            self._paused = want_pause
            if want_pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def wait(self, d: defer.Deferred, then) -> None:
        """
        Read no further line until C{d} fires; then call C{then} with its
        result or Failure, and go on with the lines buffered meanwhile.
        Nothing happens if the session closed in between.
        """
        self._busy = True

        def done(result):
            self._busy = False
            if not self._closing:
                try:
                    then(result)
                finally:
                    self._process()

        d.addBoth(done).addErrback(
            lambda f: log.failure("inbound: internal error for {peer}", f, peer=self.peer))

    def discard_input(self) -> None:
        """Forget every byte received and not yet read."""
        self._buffer.clear()

    # -- output -----------------------------------------------------------
    def _send(self, code: int, lines: list[str]) -> None:
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{code}{sep}{printable(line, 500)}\r\n".encode("ascii"))
        self.transport.write(b"".join(out))

    def reply(self, code: int, text: str, *more: str) -> None:
        """
        Send one reply (several lines when C{more}).  Past C{max_errors} 5xx
        replies, follow it with 421 and close.
        """
        if self._closing:
            return
        self._send(code, [text, *more])
        self.resetTimeout()
        if 500 <= code < 600:
            self._errors += 1
            if self._errors > self.max_errors:
                self.close(421, f"4.7.0 {self.name} Error: too many errors")

    def close(self, code: int, text: str) -> None:
        """Send a last reply and hang up; nothing more is read."""
        if self._closing:
            return
        self._send(code, [text])
        self._closing = True
        self.discard_input()
        self.setTimeout(None)
        self.transport.loseConnection()
