"""
emaild's inbound SMTP server: the factory that builds one
L{InboundSMTP} session per connection (L{emaild.inbound.session}) within
the server's limits, and the listener built from the configuration.

A new connection is answered 421 and closed, before any session is built,
while the service is not ready yet (C{421 4.3.2}), when every session slot
is taken, and when its client address already holds
C{max_sessions_per_client} sessions or opened C{max_connections_per_minute}
in the last minute (C{421 4.7.0}); other clients are still served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from twisted.application import strports
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger

from emaild.inbound.interfaces import Envelope, IInboundHandler, Refused
from emaild.inbound.limits import ClientLimits, client_address
from emaild.inbound.lines import COMMAND_LINE_LIMIT, DATA_LINE_LIMIT
from emaild.inbound.session import InboundSMTP
from emaild.inbound.tls import ensure_self_signed, tls_context_factory
from emaild.metrics import Metrics

__all__ = [
    "Refused", "Envelope", "IInboundHandler", "InboundFactory", "InboundSMTP", "client_address",
    "tls_context_factory", "ensure_self_signed", "inbound_listener", "use_self_signed",
    "COMMAND_LINE_LIMIT", "DATA_LINE_LIMIT",
]

log = Logger()


class _Refusal(Protocol):
    """Says one 421 reply and hangs up (no slot, or not ready)."""

    def __init__(self, reply: bytes):
        self.reply = reply

    def connectionMade(self):
        self.transport.write(self.reply)
        self.transport.loseConnection()


TOO_BUSY = b"421 4.7.0 Too many connections, try again later\r\n"
NOT_READY = b"421 4.3.2 Service not yet ready, try again later\r\n"


class InboundFactory(ServerFactory):
    """
    Builds L{InboundSMTP} sessions for C{handler} (an L{IInboundHandler}):
    at most C{max_sessions} at a time, of which at most
    C{max_sessions_per_client} from one client address, which may open at
    most C{max_connections_per_minute}.  A connection beyond a limit, or
    any while C{is_ready()} is False, is answered 421 and closed.
    """

    #: slows new transactions while the relay processor is behind
    #: (L{emaild.inbound.inflow.InFlow}); None: never
    inflow = None

    def __init__(self, handler, *, hostname: str, max_sessions: int = 40,
                 max_message_size: int = 10 * 2**20, idle_timeout: float = 300,
                 max_recipients: int = 100, max_commands: int = 1000,
                 max_errors: int = 20, tls_context=None, reactor=None, metrics=None,
                 is_ready: Callable[[], bool] = lambda: True,
                 max_sessions_per_client: int = 5, max_connections_per_minute: int = 60,
                 command_timeout: float = 300, data_timeout: float = 600):
        if reactor is None:
            from twisted.internet import reactor
        self.handler = handler
        self.hostname = hostname
        self.max_sessions = max_sessions
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self.max_recipients = max_recipients
        self.max_commands = max_commands
        self.max_errors = max_errors
        self.tls_context = tls_context
        self.reactor = reactor
        self.metrics = metrics if metrics is not None else Metrics()
        #: False while the service cannot store mail yet (start-up): then
        #: every new connection is answered 421 4.3.2
        self.is_ready = is_ready
        #: seconds for one whole command line, and for the whole of DATA
        #: (whatever the pace of the bytes: the idle timeout cannot see a
        #: byte-a-second trickle)
        self.command_timeout = command_timeout
        self.data_timeout = data_timeout
        self.clients = ClientLimits(reactor, per_client=max_sessions_per_client,
                                    per_minute=max_connections_per_minute)
        #: the sessions now open
        self.sessions: set[InboundSMTP] = set()

    def buildProtocol(self, addr):
        client = client_address(addr)
        if not self.is_ready():
            p = _Refusal(NOT_READY)
            self.metrics.smtp_sessions.labels("not_ready").inc()
        elif len(self.sessions) >= self.max_sessions:
            log.warn("inbound: {n} sessions open; refusing {addr}", n=len(self.sessions),
                     addr=client)
            p = _Refusal(TOO_BUSY)
            self.metrics.smtp_sessions.labels("too_busy").inc()
        elif (why := self.clients.refusal(client)) is not None:
            log.info("inbound: refusing {addr}: {why}", addr=client, why=why)
            p = _Refusal(f"421 4.7.0 {why}, try again later\r\n".encode("ascii"))
            self.metrics.smtp_sessions.labels("client_limit").inc()
        else:
            p = InboundSMTP(self)
            self.metrics.smtp_sessions.labels("accepted").inc()
        p.factory = self
        return p

    def session_opened(self, session: InboundSMTP) -> None:
        self.sessions.add(session)
        self.clients.opened(session.peer)

    def session_closed(self, session: InboundSMTP) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.clients.closed(session.peer)


def inbound_listener(config, handler, reactor, metrics=None,
                     is_ready: Callable[[], bool] = lambda: True):
    """
    The inbound SMTP server as a service listening on C{smtp.endpoint}, with
    the configured limits and certificate.  Without a configured
    certificate, STARTTLS is offered once L{use_self_signed} has made one in
    the state directory (the daemon calls it after dropping privileges, so
    the files belong to the service user).  While C{is_ready()} is False a
    new connection gets C{421 4.3.2} and is closed.
    """
    from emaild.config import ConfigError

    smtp = config["smtp"]
    tls_context = None
    if smtp["tls_certificate"]:
        tls_context = tls_context_factory(smtp["tls_certificate"],
                                          smtp["tls_key"] or smtp["tls_certificate"])
    elif smtp["tls_key"]:
        raise ConfigError("smtp.tls_key", "is set without smtp.tls_certificate")
    factory = InboundFactory(
        handler,
        hostname=_hostname(config),
        max_sessions=smtp["max_sessions"],
        max_message_size=smtp["max_message_size"],
        idle_timeout=smtp["idle_timeout"],
        max_recipients=smtp["max_recipients"],
        max_commands=smtp["max_commands"],
        max_errors=smtp["max_errors"],
        tls_context=tls_context,
        reactor=reactor,
        metrics=metrics,
        is_ready=is_ready,
        max_sessions_per_client=smtp["max_sessions_per_client"],
        max_connections_per_minute=smtp["max_connections_per_minute"],
        command_timeout=smtp["command_timeout"],
        data_timeout=smtp["data_timeout"],
    )
    return strports.service(smtp["endpoint"], factory, reactor=reactor)


def _hostname(config) -> str:
    return config["smtp"]["hostname"] or config["smtp"]["relay_domain"]


def use_self_signed(config, listener) -> None:
    """
    Give the listener a self-signed certificate from the state directory
    (made on first start) unless one is configured.
    """
    factory = listener.factory
    if factory.tls_context is None:
        certificate, key = ensure_self_signed(Path(config.state_dir), _hostname(config))
        factory.tls_context = tls_context_factory(certificate, key)
