"""
The line layer under the inbound SMTP session, on Twisted's
L{LineReceiver}: lines read strictly in order, with per-mode line ends and
length limits, replies that count errors, and a way to wait for the handler
without reading ahead.

How each guarantee maps onto L{LineReceiver}:
  - strict order while the handler decides: L{wait} sets LineReceiver's
    C{paused} (it keeps what arrives and splits no line) and clears it when
    the answer came, running the lines kept meanwhile.  The transport is
    paused only once more than L{WAIT_BUFFER_LIMIT} octets arrived during
    one wait: a client that waits for each reply, as almost all do, never
    costs the two epoll_ctl calls of pausing and resuming the socket;
  - command lines end at LF (a CR before it is dropped) and may be
    L{COMMAND_LINE_LIMIT} long; message lines end at CRLF only (so a bare LF
    can never end the message) and may be L{DATA_LINE_LIMIT} long: setting
    C{in_data} switches to raw mode, read as below;
  - a longer line, in either mode, is C{500 5.5.6} and close
    (C{lineLengthExceeded}): falling back to command mode inside a message
    would run its lines as commands;
  - STARTTLS drops what was buffered after it: C{clearLineBuffer()}.

DATA is read in raw mode (C{setRawMode()}): a message arrives in a few
large chunks, and calling back once per line cost more than all the rest
of a message's reading.  Each chunk is cut at its last CRLF; the complete
lines are checked for length (the same L{DATA_LINE_LIMIT}), dot-unstuffed
and handed on at once (L{message_data}); the partial line waits for the
next chunk, so a line, and the final CRLF.CRLF, may span chunks.  The end
of the message is a line holding only ".", found only at CRLF (a bare LF
never ends it).  What follows the final dot goes back to line mode, read
as commands in order.
"""

from __future__ import annotations

from twisted.internet import defer, tcp
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin

from emaild.inbound.syntax import printable

log = Logger()

#: longest command line, in octets including the line end (RFC 5321 allows
#: 512 for a command; ESMTP parameters make it longer)
COMMAND_LINE_LIMIT = 1000
#: longest line of a message, in octets including CRLF.  RFC 5322 says 1000;
#: real mail sometimes has longer lines, so we accept up to 16 KiB.
DATA_LINE_LIMIT = 16384
#: octets a client may send while the handler decides before its socket is
#: paused (a pipelining client's next commands fit many times over)
WAIT_BUFFER_LIMIT = 64 * 1024


class LineSession(LineReceiver, TimeoutMixin):
    """
    Subclasses implement L{line} and set C{in_data} while a message is
    being read (see the module's docstring for the line ends and limits).
    """

    #: the name in the last replies (set by the subclass)
    name = "localhost"
    #: 5xx replies allowed; one more and the session is closed
    max_errors = 20
    #: the peer, for log lines
    peer = "unknown"

    delimiter = b"\n"
    MAX_LENGTH = COMMAND_LINE_LIMIT - 1
    _in_data = False
    #: the message's last line so far, until its CRLF arrives
    _partial = b""
    _waiting = False
    #: octets received during the current wait, and whether the socket is paused
    _waited_octets = 0
    _transport_paused = False
    #: the connection's socket while replies may be sent on it directly (L{_write})
    _socket = None
    _closing = False
    _errors = 0

    def line(self, line: bytes) -> None:
        """One command line (CR LF or LF removed)."""
        raise NotImplementedError

    def message_data(self, data: bytes) -> None:
        """Complete lines of the message being read (dot-unstuffed, with their CRLFs)."""
        raise NotImplementedError

    def message_end(self) -> None:
        """The message's final dot arrived (C{in_data} is False again)."""
        raise NotImplementedError

    @property
    def in_data(self) -> bool:
        """Whether message lines (not commands) are being read."""
        return self._in_data

    @in_data.setter
    def in_data(self, value: bool) -> None:
        self._in_data = value
        self._partial = b""
        if value:
            self.setRawMode()
        else:
            self.setLineMode()

    @property
    def waiting(self) -> bool:
        """Whether a L{wait} is in progress (no line is read meanwhile)."""
        return self._waiting

    def connectionMade(self):
        super().connectionMade()
        # a plain TCP connection (not one that begins with TLS: its
        # transport is a TLS protocol over tcp.Server)
        if type(self.transport) is tcp.Server:
            self._socket = self.transport.getHandle()

    # -- input ------------------------------------------------------------
    def dataReceived(self, data: bytes):
        if self._closing:
            return
        self.resetTimeout()
        if self._waiting and not self._transport_paused:
            self._waited_octets += len(data)
            if self._waited_octets > WAIT_BUFFER_LIMIT:
                self._transport_paused = True
                self.transport.pauseProducing()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        if not self._in_data and line.endswith(b"\r"):
            line = line[:-1]
        self.line(line)

    def rawDataReceived(self, data: bytes) -> None:
        # only while in_data (see the module docstring)
        if self._closing:
            return
        chunk = self._partial + data if self._partial else data
        if chunk.startswith(b".\r\n"):
            end = 0
        else:
            end = chunk.find(b"\r\n.\r\n")
            if end >= 0:
                end += 2
        if end < 0:  # no end yet: the complete lines, and keep the partial one
            last = chunk.rfind(b"\r\n")
            if last < 0:
                self._partial = chunk
            else:
                self._partial = chunk[last + 2:]
                if not self._message_lines(chunk[:last + 2]):
                    return
            if len(self._partial) >= DATA_LINE_LIMIT:
                self.lineLengthExceeded(self._partial)
            return
        if end and not self._message_lines(chunk[:end]):
            return
        self.in_data = False
        # what followed the dot: commands, read once this message is answered
        self.setLineMode(chunk[end + 3:])
        self.message_end()

    def _message_lines(self, lines: bytes) -> bool:
        """Check and unstuff complete lines; False if one was too long (closed)."""
        if len(lines) > DATA_LINE_LIMIT and max(map(len, lines.split(b"\r\n"))) \
                > DATA_LINE_LIMIT - 2:
            self.lineLengthExceeded(lines)
            return False
        if lines[:1] == b".":
            lines = lines[1:]
        self.message_data(lines.replace(b"\r\n.", b"\r\n"))
        return True

    def lineLengthExceeded(self, line: bytes) -> None:
        self.close(500, "5.5.6 Line too long")

    def connectionLost(self, reason):
        self._closing = True
        self.setTimeout(None)

    def wait(self, d: defer.Deferred, then) -> None:
        """
        Read no further line until C{d} fires; then call C{then} with its
        result or Failure, and go on with the lines received meanwhile.
        Nothing happens if the session closed in between.
        """
        self._waiting = True
        self._waited_octets = 0
        held = False

        def done(result):
            self._waiting = False
            if self._closing:
                return None
            try:
                then(result)
            finally:
                if held and not self._closing:
                    self._resume_lines()

        d.addBoth(done).addErrback(
            lambda f: log.failure("inbound: internal error for {peer}", f, peer=self.peer))
        if self._waiting:  # no answer yet: split no line until there is
            held = True
            self.paused = True

    def _resume_lines(self) -> None:
        self.paused = False
        if self._transport_paused:
            self._transport_paused = False
            self.transport.resumeProducing()
        # the lines that arrived meanwhile (LineReceiver keeps them while paused)
        self.dataReceived(b"")

    def discard_input(self) -> None:
        """Forget every byte received and not yet read."""
        self.clearLineBuffer()
        self._partial = b""

    # -- output -----------------------------------------------------------
    def _send(self, code: int, lines: list[str]) -> None:
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            out.append(f"{code}{sep}{printable(line, 500)}\r\n".encode("ascii"))
        self._write(b"".join(out))

    def _write(self, data: bytes) -> None:
        """
        Send C{data} on the socket at once when it takes all of it, else
        through the transport.  The transport's write only buffers and has
        the reactor watch the socket for writing, then sends on the next
        turn and stops watching: two epoll_ctl calls and a turn for every
        reply.  A reply is small and the socket's buffer empty between
        replies, so one send() takes it whole.  After the first reply that
        does not go whole, everything goes through the transport, so the
        order holds; so does everything once TLS starts (L{start_tls}).
        """
        sock = self._socket
        if sock is not None:
            try:
                sent = sock.send(data)
            except OSError:  # full, or the peer gone: the transport finds out
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
            self._socket = None
        self.transport.write(data)

    def start_tls(self, context) -> None:
        """Start TLS on the connection; every later reply goes through it."""
        self._socket = None
        self.transport.startTLS(context)

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
