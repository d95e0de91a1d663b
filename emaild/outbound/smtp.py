"""
The C{smtp} transport: deliver outbound messages to an SMTP relay (Amazon SES
or any submission server) over a small pool of long-lived connections.

Each connection is a worker coroutine: connect, greet, STARTTLS, AUTH, then
take messages one after another from this transport until it has sent
C{max_messages_per_connection}, sat idle for C{idle_close} seconds, or the
transport closes; then QUIT.  The wire protocol lives in
L{emaild.outbound.smtpclient}.

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
from twisted.internet import error, ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from zope.interface import implementer

from emaild.outbound.smtpclient import (
    SessionFailed,
    SMTPClientProtocol,
    address_problem,
    retry,
)
from emaild.outbound.transport import DeliveryResult, IDeliveryTransport, Outcome, OutgoingMessage

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


@attrs.define(eq=False)
class _Job:
    message: OutgoingMessage
    d: Deferred = attrs.Factory(Deferred)

    def finish(self, result: DeliveryResult):
        if not self.d.called:
            self.d.callback(result)


@attrs.define(eq=False)
class _Connection:
    """One slot of the pool and the worker that runs it."""

    connector: object = None
    proto: SMTPClientProtocol | None = None
    #: set once greeting/TLS/AUTH went through
    ready: bool = False
    #: while idle: fires with the next _Job, or None to stop
    idle: Deferred | None = None
    idle_timer: object = None


class _Factory(ClientFactory):
    # one factory per connection: no "Starting/Stopping factory" log lines
    noisy = False

    def __init__(self, transport, conn, connected):
        self.transport = transport
        self.conn = conn
        self.connected = connected

    def buildProtocol(self, addr):
        t = self.transport
        proto = SMTPClientProtocol(t._reactor, t.host, t.reply_timeout, t.data_timeout,
                                   implicit_tls=t.tls == "implicit")
        proto.factory = self
        self.conn.proto = proto
        proto.on_lost = lambda: t._connection_lost(self.conn)
        proto.on_made = self._made
        return proto

    def _made(self, proto):
        if not self.connected.called:
            self.connected.callback(proto)

    def clientConnectionFailed(self, connector, reason):
        t = self.transport
        where = f"{t.host}:{t.port}"
        if t._aborting:
            text = f"transport aborted while connecting to {where}"
        elif reason.check(error.TimeoutError):
            text = f"timed out after {t.connect_timeout:g}s connecting to {where}"
        else:
            text = f"could not connect to {where}: {reason.getErrorMessage()}"
        if not self.connected.called:
            self.connected.errback(SessionFailed(retry(text)))


@implementer(IDeliveryTransport)
class SMTPTransport:
    """
    Deliver through an SMTP relay.

    @param reactor: provides IReactorTCP, IReactorSSL and IReactorTime.
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
        self._reactor = reactor
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
        self._queue: collections.deque[_Job] = collections.deque()
        self._closing = False
        self._aborting = False
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
        idle = next((c for c in self._conns if c.idle is not None), None)
        if idle is not None:
            self._wake(idle, job)
        elif len(self._conns) < self.connections:
            self._start(job)
        else:
            self._queue.append(job)
        return job.d

    def capacity(self) -> int:
        if self._closing:
            return 0
        idle = sum(1 for c in self._conns if c.idle is not None)
        free = idle + self.connections - len(self._conns) - len(self._queue)
        return max(free, 0)

    def close(self) -> Deferred:
        self._closing = True
        for conn in list(self._conns):
            if conn.idle is not None:
                self._wake(conn, None)
        d = Deferred()
        if self._conns:
            self._close_waiters.append(d)
        else:
            d.callback(None)
        return d

    def abort(self):
        self._closing = self._aborting = True
        queued, self._queue = self._queue, collections.deque()
        for job in queued:
            job.finish(retry("transport aborted"))
        for conn in list(self._conns):
            if conn.proto is not None:
                conn.proto.abort("transport aborted during {step}")
            elif conn.connector is not None:
                try:
                    conn.connector.stopConnecting()
                except error.NotConnectingError:
                    pass

    # -- the pool --------------------------------------------------------
    def _start(self, job: _Job):
        conn = _Connection()
        self._conns.add(conn)
        Deferred.fromCoroutine(self._run(conn, job))

    def _wake(self, conn: _Connection, job: _Job | None):
        d, conn.idle = conn.idle, None
        if conn.idle_timer is not None and conn.idle_timer.active():
            conn.idle_timer.cancel()
        conn.idle_timer = None
        d.callback(job)

    def _connection_lost(self, conn: _Connection):
        if conn.idle is not None:
            self._wake(conn, None)  # the relay closed an idle connection

    def _next_job(self, conn: _Connection) -> Deferred:
        """The next message for C{conn}, or None when it should close."""
        if not conn.proto.connected_:
            return succeed(None)  # queued messages go to a new connection
        if self._queue:
            return succeed(self._queue.popleft())
        if self._closing:
            return succeed(None)
        conn.idle = Deferred()
        conn.idle_timer = self._reactor.callLater(self.idle_close, self._wake, conn, None)
        return conn.idle

    async def _connect(self, conn: _Connection) -> SMTPClientProtocol:
        connected = Deferred()
        factory = _Factory(self, conn, connected)
        if self.tls == "implicit":
            conn.connector = self._reactor.connectSSL(
                self.host, self.port, factory, self._tls_options,
                timeout=self.connect_timeout)
        else:
            conn.connector = self._reactor.connectTCP(
                self.host, self.port, factory, timeout=self.connect_timeout)
        proto = await connected
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
            sent = 0
            while job is not None:
                result = await proto.send(job.message)
                sent += 1
                if proto.broken or sent >= self.max_messages_per_connection:
                    job.finish(result)
                    break
                # Be idle before reporting, so a sender that reacts to the
                # result by asking capacity() sees this connection free.
                following = self._next_job(conn)
                job.finish(result)
                job = await following
            await proto.quit()
        except Exception:
            log.failure("SMTP connection to {host}:{port} failed", host=self.host, port=self.port)
            if job is not None:
                failed, result = [job], retry("internal error in the SMTP transport (see the log)")
            if conn.proto is not None:
                conn.proto.abort("internal error during {step}")
        finally:
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
