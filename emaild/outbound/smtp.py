"""
The C{smtp} transport: deliver outbound messages to an SMTP relay (Amazon SES
or any submission server) over a small pool of long-lived connections.

Each connection is set up by a coroutine (connect through
C{HostnameEndpoint}, wrapped by C{wrapClientTLS} for implicit TLS; greet,
STARTTLS, AUTH).  Then the protocol asks for the next message whenever it
can take one -- with PIPELINING as soon as the previous one's data is on
its way, so a message costs one round trip -- until the session has carried
C{max_messages_per_connection}, sat idle for C{idle_close} seconds, or the
transport closes; then the coroutine waits for the last outcomes and says
QUIT.  The wire protocol lives in L{emaild.outbound.smtpclient}.

Outcomes (see L{emaild.outbound.transport.Outcome}):
  - 2xx after the data: SENT; 5xx: FAILED; 4xx: RETRY, except SES's
    "454 Throttling failure" (THROTTLED, or QUOTA for the daily quota).
  - Anything wrong with the session rather than the message -- connection
    refused or lost, timeouts, a failed certificate check, a relay without
    STARTTLS when TLS is required, and a relay refusing our credentials
    (535) -- is RETRY: it is our configuration or the network, not the
    message, and a bad password must not turn a queue of mail into bounces.
    The reply text says what went wrong, for the attempt log.
  - An envelope address that could smuggle SMTP commands (CR, LF, "<", ">",
    whitespace) is FAILED before anything is sent.

There is no reconnect loop here: a connection that fails fails the messages
handed to it, and the outbox retries them later with its backoff.
"""

from __future__ import annotations

import collections
import re
import socket

import attrs
from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.logger import Logger
from zope.interface import implementer

from emaild.outbound.smtpclient import SMTPClientProtocol
from emaild.outbound.smtpwire import SessionFailed, address_problem, retry
from emaild.outbound.transport import (
    DeliveryResult,
    IDeliveryTransport,
    Outcome,
    OutgoingMessage,
)

log = Logger(namespace="emaild.outbound.smtp")

TLS_MODES = ("starttls", "implicit", "none")


def load_trust_root(trust_roots_pem):
    """
    The CAs to check the relay's certificate against: the platform's store,
    or the certificates in a PEM bundle (PEM bytes, or a path to the file).
    """
    if trust_roots_pem is None:
        return ssl.platformTrust()
    if isinstance(trust_roots_pem, bytes) and b"-----BEGIN" in trust_roots_pem:
        pem = trust_roots_pem
    else:
        with open(trust_roots_pem, "rb") as f:
            pem = f.read()
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
    if not blocks:
        raise ValueError("no certificate in trust_roots_pem")
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])


def _bytes(text):
    return text.encode("utf-8") if isinstance(text, str) else text


class _Job:
    __slots__ = ("message", "d")

    def __init__(self, message: OutgoingMessage):
        self.message = message
        self.d = Deferred()

    def finish(self, result: DeliveryResult):
        if not self.d.called:
            self.d.callback(result)


@attrs.define(eq=False)
class _Connection:
    """One slot of the pool and the session that runs in it."""

    proto: SMTPClientProtocol | None = None
    #: the endpoint's connect Deferred while connecting (cancelled to abort)
    connecting: Deferred | None = None
    #: why connecting was cancelled: "timeout" or "abort"
    cancelled: str | None = None
    #: set once greeting/TLS/AUTH went through
    ready: bool = False
    #: messages handed to this session
    sent: int = 0
    idle: bool = False
    idle_timer: object = None
    #: fires when the session should end (after its messages finish)
    ending: Deferred = attrs.Factory(Deferred)


@implementer(IDeliveryTransport)
class SMTPTransport:
    """
    Deliver through an SMTP relay.

    @param reactor: provides IReactorTCP, IReactorTime and
        IReactorPluggableNameResolver (for L{HostnameEndpoint}).
    @param host: the relay's host name (or IP address); the certificate
        must be valid for it.
    @param tls: "starttls" (STARTTLS required: a relay that does not offer
        it gets nothing, not even credentials), "implicit" (TLS from the
        first byte, e.g. SES port 465) or "none".
    @param username: AUTH PLAIN (or LOGIN when PLAIN is not offered) after
        TLS; None for no AUTH.
    @param connections: at most this many connections at once.
    @param helo_name: our name in EHLO/HELO (default: socket.getfqdn()).
    @param connect_timeout: seconds for the TCP connect.
    @param reply_timeout: seconds to wait for each reply.
    @param data_timeout: seconds to wait for the reply after the data.
    @param trust_roots_pem: CA certificates (PEM bytes, or the path of a PEM
        bundle) to trust instead of the platform's store.
    @param max_messages_per_connection: QUIT and reconnect after this many
        (a new session costs a connect, greeting, EHLO, TLS and AUTH).
    @param idle_close: QUIT a connection idle this many seconds.
    """

    name = "smtp"

    def __init__(self, reactor, host: str, port: int, tls: str = "starttls",
                 username: str | None = None, password: str | None = None,
                 connections: int = 4, helo_name: str | None = None,
                 connect_timeout: float = 30.0, reply_timeout: float = 60.0,
                 data_timeout: float = 600.0, trust_roots_pem=None,
                 max_messages_per_connection: int = 1000, idle_close: float = 30.0):
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {TLS_MODES}, not {tls!r}")
        if connections < 1 or max_messages_per_connection < 1:
            raise ValueError("connections and max_messages_per_connection must be >= 1")
        self.reactor = reactor
        self.host = host
        self.port = port
        self.tls = tls
        self.username = _bytes(username)
        self.password = _bytes(password)
        self.connections = connections
        helo_name = helo_name or socket.getfqdn() or "localhost"
        self.helo_name = helo_name.encode("idna") if not helo_name.isascii() else helo_name.encode()
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self.data_timeout = data_timeout
        self.max_messages_per_connection = max_messages_per_connection
        self.idle_close = idle_close
        self._tls_options = None
        if tls != "none":
            # optionsForClientTLS checks both the chain and the host name.
            self._tls_options = ssl.optionsForClientTLS(
                host, trustRoot=load_trust_root(trust_roots_pem))
        self._conns: set[_Connection] = set()
        #: connections waiting for a message
        self._idle: list[_Connection] = []
        self._queue: collections.deque[_Job] = collections.deque()
        self._closing = False
        self._close_waiters: list[Deferred] = []

    # -- IDeliveryTransport ----------------------------------------------------
    def deliver(self, message: OutgoingMessage) -> Deferred:
        if self._closing:
            return succeed(retry("transport closing"))
        problem = (address_problem(message.sender, "sender")
                   or address_problem(message.recipient, "recipient"))
        if problem:
            return succeed(DeliveryResult(Outcome.FAILED, None, problem))
        job = _Job(message)
        if self._idle:
            self._send(self._idle.pop(), job)
        elif len(self._conns) < self.connections:
            self._start(job)
        else:
            self._queue.append(job)
        return job.d

    def capacity(self) -> int:
        if self._closing:
            return 0
        free = len(self._idle) + self.connections - len(self._conns) - len(self._queue)
        return max(free, 0)

    def close(self) -> Deferred:
        self._closing = True
        for conn in list(self._idle):
            self._end(conn)
        d = Deferred()
        if self._conns:
            self._close_waiters.append(d)
        else:
            d.callback(None)
        return d

    def abort(self):
        self._closing = True
        queued, self._queue = self._queue, collections.deque()
        for job in queued:
            job.finish(retry("transport aborted"))
        for conn in list(self._conns):
            if conn.connecting is not None:
                conn.cancelled = "abort"
                conn.connecting.cancel()
            elif conn.proto is not None:
                conn.proto.abort("transport aborted during {step}")

    # -- the pool --------------------------------------------------------
    def _start(self, job: _Job):
        conn = _Connection()
        self._conns.add(conn)
        Deferred.fromCoroutine(self._run(conn, job))

    def _send(self, conn: _Connection, job: _Job) -> None:
        if conn.idle:
            conn.idle = False
            if conn.idle_timer is not None and conn.idle_timer.active():
                conn.idle_timer.cancel()
            conn.idle_timer = None
        conn.sent += 1
        conn.proto.send(job.message, job.finish)

    def _ready(self, conn: _Connection) -> None:
        """The session can take another message: give it one, or end it."""
        proto = conn.proto
        if proto.broken or not proto.accepting or conn.sent >= self.max_messages_per_connection:
            self._end(conn)
        elif self._queue:
            self._send(conn, self._queue.popleft())
        elif self._closing:
            self._end(conn)
        elif not conn.idle:
            conn.idle = True
            self._idle.append(conn)
            conn.idle_timer = self.reactor.callLater(self.idle_close, self._end, conn)

    def _end(self, conn: _Connection) -> None:
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)
            if conn.idle_timer is not None and conn.idle_timer.active():
                conn.idle_timer.cancel()
            conn.idle_timer = None
        if not conn.ending.called:
            conn.ending.callback(None)

    def _connect_timed_out(self, conn: _Connection) -> None:
        if conn.connecting is not None:
            conn.cancelled = "timeout"
            conn.connecting.cancel()

    async def _connect(self, conn: _Connection) -> SMTPClientProtocol:
        proto = SMTPClientProtocol(self.reactor, self.host, self.reply_timeout,
                                   self.data_timeout, implicit_tls=self.tls == "implicit")
        proto.on_lost = lambda: self._end(conn)
        proto.on_ready = lambda: self._ready(conn)
        # HostnameEndpoint resolves the name (IPv4 and IPv6) without blocking;
        # the connect timeout is ours, by cancelling, so it bounds the name
        # lookup and the TLS wrapper too.
        endpoint = HostnameEndpoint(self.reactor, self.host, self.port,
                                    timeout=self.connect_timeout)
        if self.tls == "implicit":
            endpoint = wrapClientTLS(self._tls_options, endpoint)
        where = f"{self.host}:{self.port}"
        conn.connecting = connectProtocol(endpoint, proto)
        timer = self.reactor.callLater(self.connect_timeout, self._connect_timed_out, conn)
        try:
            await conn.connecting
        except Exception as e:
            if conn.cancelled == "abort":
                text = f"transport aborted while connecting to {where}"
            elif conn.cancelled == "timeout":
                text = f"timed out after {self.connect_timeout:g}s connecting to {where}"
            else:
                text = f"could not connect to {where}: {e}"
            raise SessionFailed(retry(text)) from None
        finally:
            conn.connecting = None
            if timer.active():
                timer.cancel()
        conn.proto = proto
        log.info("connection opened to {host}:{port}", host=self.host, port=self.port)
        await proto.start(self.helo_name,
                          self._tls_options if self.tls == "starttls" else None,
                          self.username, self.password)
        return proto

    async def _run(self, conn: _Connection, job: _Job):
        # Jobs that fail with the session, reported once the slot is free.
        failed: list[_Job] = []
        result = None
        try:
            try:
                proto = await self._connect(conn)
            except SessionFailed as e:
                log.warn("relay {host}:{port} unusable: {reason}",
                         host=self.host, port=self.port, reason=e.result.reply)
                failed, result = [job], e.result
                if conn.proto is not None:
                    conn.proto.abort("session setup failed")
                if not any(c.ready for c in self._conns):
                    # Nothing else would take the queue but another doomed
                    # connection attempt: hand it back to the outbox now.
                    failed += self._queue
                    self._queue.clear()
                return
            conn.ready = True
            self._send(conn, job)
            job = None  # the protocol reports its outcome
            await conn.ending
            await proto.drained()
            await proto.quit()
        except Exception:
            log.failure("SMTP connection to {host}:{port} failed", host=self.host, port=self.port)
            if job is not None:
                failed, result = [job], retry("internal error in the SMTP transport (see the log)")
            if conn.proto is not None:
                conn.proto.abort("internal error during {step}")
        finally:
            self._end(conn)
            if conn.proto is not None:
                await conn.proto.when_closed()
                log.info("connection to {host}:{port} closed", host=self.host, port=self.port)
            self._conns.discard(conn)
            for j in failed:
                j.finish(result)
            self._after_exit()

    def _after_exit(self):
        # A slot came free: give it to a message waiting in the queue.
        while self._queue and len(self._conns) < self.connections:
            self._start(self._queue.popleft())
        if self._closing and not self._conns:
            waiters, self._close_waiters = self._close_waiters, []
            for d in waiters:
                d.callback(None)
