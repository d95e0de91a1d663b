"""
A configurable loopback SMTP relay for tests and benchmarks.

Built on L{twisted.mail.smtp.ESMTP}; it records every message it receives
(envelope and the exact data bytes after un-stuffing dots) and can be told to
refuse recipients, answer the end of data with any reply, drop the connection
in the middle of DATA, require STARTTLS or implicit TLS, require AUTH, or never
answer at all.

    relay = Relay(rcpt_policy=lambda rcpt: (550, "5.1.1 user unknown")
                  if rcpt.startswith("bob@") else None)
    port = relay.start()
    ...
    await relay.stop()
"""

from __future__ import annotations

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.mail import smtp
from twisted.mail.imap4 import LOGINCredentials, PLAINCredentials
from zope.interface import implementer


@attrs.define
class ReceivedMessage:
    mail_from: str
    recipients: list[str]
    #: the data as received, after un-stuffing, lines ended by CRLF
    data: bytes
    #: the raw MAIL command line, with its ESMTP parameters
    mail_command: bytes
    tls: bool
    user: bytes | None
    #: the code we answered the end of data with (None: not answered)
    code: int | None = None


@attrs.define
class Session:
    #: command lines received (AUTH arguments masked)
    commands: list[bytes] = attrs.Factory(list)
    tls: bool = False
    user: bytes | None = None
    closed: bool = False


@implementer(IRealm)
class _Realm:
    def requestAvatar(self, avatarId, mind, *interfaces):
        # The protocol validates addresses itself; the avatar only has to be
        # something ESMTP accepts as an IMessageDelivery.
        return smtp.IMessageDelivery, object(), lambda: None


class _RelayESMTP(smtp.ESMTP):
    # Long lines must not fall back to command mode (see docs/design.md, known traps): allow them.
    MAX_LENGTH = 1 << 20

    def __init__(self, relay: Relay, session: Session):
        challengers = {}
        if relay.auth is not None:
            known = {b"PLAIN": PLAINCredentials, b"LOGIN": LOGINCredentials}
            challengers = {m: known[m] for m in relay.auth_mechanisms}
        super().__init__(chal=challengers, contextFactory=relay._tls_options
                         if not relay.implicit_tls else None)
        self.relay = relay
        self.session = session
        self.host = relay.hostname
        self._data_lines: list[bytes] | None = None
        self._envelope = None

    # -- bookkeeping --------------------------------------------------
    def connectionMade(self):
        self.relay._active.add(self)
        self.relay.max_active = max(self.relay.max_active, len(self.relay._active))
        self.session.tls = self.relay.implicit_tls
        super().connectionMade()

    def connectionLost(self, reason):
        self.relay._active.discard(self)
        self.session.closed = True
        super().connectionLost(reason)
        self.relay._lost(self)

    def secure(self) -> bool:
        return self.startedTLS or self.relay.implicit_tls

    def state_COMMAND(self, line):
        recorded = line
        if line[:4].upper() == b"AUTH":
            recorded = b" ".join(line.split()[:2])  # no credentials in the log
        self.session.commands.append(recorded)
        return super().state_COMMAND(line)

    def ext_STARTTLS(self, rest):
        super().ext_STARTTLS(rest)
        self.session.tls = self.startedTLS

    def extensions(self):
        ext = super().extensions()
        if self.relay.tls_pem is not None and not self.secure():
            ext.pop(b"AUTH", None)  # never invite credentials in clear
        if self.relay.pipelining:
            ext[b"PIPELINING"] = None
        if self.relay.size is not None:
            ext[b"SIZE"] = [str(self.relay.size).encode()]
        if self.relay.eightbitmime:
            ext[b"8BITMIME"] = None
        return ext

    def ext_AUTH(self, rest):
        if self.relay.tls_pem is not None and not self.secure():
            self.sendCode(538, b"5.7.11 Encryption required for requested authentication mechanism")
            return
        super().ext_AUTH(rest)

    def _cbAuthenticated(self, loginInfo):
        self.session.user = getattr(self.challenger, "username", None)
        return super()._cbAuthenticated(loginInfo)

    # -- envelope -----------------------------------------------------
    def validateFrom(self, helo, origin):
        if self.relay.require_tls and not self.secure():
            raise smtp.SMTPServerError(530, "5.7.0 Must issue a STARTTLS command first")
        if self.relay.auth is not None and not self.authenticated:
            raise smtp.SMTPServerError(530, "5.7.0 Authentication required")
        return origin

    def validateTo(self, user):
        if self.relay.rcpt_policy is not None:
            answer = self.relay.rcpt_policy(str(user.dest))
            if answer is not None:
                raise smtp.SMTPServerError(answer[0], answer[1])
        return lambda: None

    # -- data: our own, to keep the bytes exact and answer any code -----
    def do_DATA(self, rest):
        if self._from is None or not self._to:
            self.sendCode(503, b"Must have valid receiver and originator")
            return
        mail_command = next(
            (c for c in reversed(self.session.commands) if c[:4].upper() == b"MAIL"),
            b"",
        )
        self._envelope = (str(self._from), [str(u.dest) for u, _ in self._to], mail_command)
        self._from, self._to = None, []
        self._data_lines = []
        self.mode = smtp.DATA
        self.sendCode(354, b"Continue")

    def state_DATA(self, line):
        lines = self._data_lines
        if line == b".":
            self.mode = smtp.COMMAND
            self._data_lines = None
            self._end_of_data(b"".join(l + b"\r\n" for l in lines))
            return
        if line[:1] == b".":
            line = line[1:]
        lines.append(line)
        drop = self.relay.drop_mid_data
        if drop and len(lines) >= int(drop):
            self.transport.abortConnection()

    def _end_of_data(self, data):
        mail_from, recipients, mail_command = self._envelope
        message = ReceivedMessage(
            mail_from=mail_from, recipients=recipients, data=data,
            mail_command=mail_command, tls=self.secure(), user=self.session.user,
        )
        self.relay.messages.append(message)
        policy = self.relay.data_policy
        if policy is None:
            answer = (250, f"2.0.0 Ok: queued as {len(self.relay.messages)}")
        else:
            answer = policy(message)
        if answer is None:
            return  # never answer: the client's timeout must fire

        def reply(answer):
            if answer is not None:
                message.code = answer[0]
                self.sendCode(answer[0], answer[1].encode())

        defer.maybeDeferred(lambda: answer).addCallback(reply)


class _Silent(protocol.Protocol):
    """Accepts the connection and never says a word."""

    def __init__(self, relay):
        self.relay = relay

    def connectionMade(self):
        self.relay._active.add(self)

    def connectionLost(self, reason):
        self.relay._active.discard(self)
        self.relay._lost(self)


class _Factory(smtp.SMTPFactory):
    def __init__(self, relay):
        super().__init__()
        self.relay = relay

    def buildProtocol(self, addr):
        relay = self.relay
        session = Session()
        relay.sessions.append(session)
        if relay.silent:
            p = _Silent(relay)
        else:
            p = _RelayESMTP(relay, session)
            if relay.auth is not None:
                user, password = relay.auth
                checker = InMemoryUsernamePasswordDatabaseDontUse()
                checker.addUser(user, password)
                p.portal = Portal(_Realm(), [checker])
        p.factory = self
        relay._protocols.add(p)
        return p


@implementer(IOpenSSLServerConnectionCreator)
class _ServerTLS:
    """
    A server context factory from key + certificate PEM; built from
    cryptography objects because handing pyOpenSSL its own X509/PKey objects
    (what ssl.PrivateCertificate.options() does) is deprecated.
    """

    def __init__(self, pem: bytes):
        self._key = serialization.load_pem_private_key(pem, password=None)
        self._cert = x509.load_pem_x509_certificate(pem)
        self._context = None

    def getContext(self):
        if self._context is None:
            ctx = SSL.Context(SSL.TLS_METHOD)
            ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
            ctx.use_certificate(self._cert)
            ctx.use_privatekey(self._key)
            self._context = ctx
        return self._context

    def serverConnectionForTLS(self, tlsProtocol):
        return SSL.Connection(self.getContext(), None)


class Relay:
    """
    A loopback SMTP relay.

    @param rcpt_policy: C{f(recipient: str)} returning None to accept or
        C{(code, text)} to refuse the RCPT.
    @param data_policy: C{f(message: ReceivedMessage)} returning C{(code,
        text)} (or a Deferred of it) to answer the end of data, or None to
        never answer.  Default: 250.
    @param drop_mid_data: abort the connection after this many data lines
        (True: after the first).
    @param tls_pem: key + certificate PEM for TLS; STARTTLS is offered
        unless C{implicit_tls}.  AUTH is hidden until TLS is on.
    @param require_tls: refuse MAIL before STARTTLS (530).
    @param implicit_tls: TLS from the first byte (like SES port 465).
    @param auth: C{(username, password)} bytes; AUTH required.
    @param auth_mechanisms: which of PLAIN and LOGIN to offer.
    @param pipelining: advertise PIPELINING.
    @param size: advertise SIZE with this limit (not enforced).
    @param eightbitmime: advertise 8BITMIME.
    @param silent: accept connections and never answer (no greeting).
    """

    def __init__(self, reactor=None, *, rcpt_policy=None, data_policy=None,
                 drop_mid_data=False, tls_pem=None, require_tls=False,
                 implicit_tls=False, auth=None, auth_mechanisms=(b"PLAIN", b"LOGIN"),
                 pipelining=True, size=None,
                 eightbitmime=False, silent=False, hostname=b"relay.test"):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.rcpt_policy = rcpt_policy
        self.data_policy = data_policy
        self.drop_mid_data = drop_mid_data
        self.tls_pem = tls_pem
        self.require_tls = require_tls
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.auth_mechanisms = auth_mechanisms
        self.pipelining = pipelining
        self.size = size
        self.eightbitmime = eightbitmime
        self.silent = silent
        self.hostname = hostname
        self._tls_options = None
        if tls_pem is not None:
            self._tls_options = _ServerTLS(tls_pem)
        elif implicit_tls:
            raise ValueError("implicit_tls needs tls_pem")
        self.messages: list[ReceivedMessage] = []
        self.sessions: list[Session] = []
        self.max_active = 0
        self._active: set = set()
        self._protocols: set = set()
        self._lost_waiters: list[defer.Deferred] = []
        self._port = None
        self.port: int | None = None

    @property
    def connections(self) -> int:
        """How many connections were accepted so far."""
        return len(self.sessions)

    @property
    def accepted(self) -> list[ReceivedMessage]:
        return [m for m in self.messages if m.code is not None and m.code < 300]

    def all_commands(self) -> list[bytes]:
        return [c for s in self.sessions for c in s.commands]

    def start(self) -> int:
        """Listen on 127.0.0.1, an ephemeral port; return the port number."""
        factory = _Factory(self)
        if self.implicit_tls:
            self._port = self.reactor.listenSSL(
                0, factory, self._tls_options, interface="127.0.0.1")
        else:
            self._port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self._port.getHost().port
        return self.port

    def _lost(self, p):
        self._protocols.discard(p)
        if not self._protocols:
            waiters, self._lost_waiters = self._lost_waiters, []
            for d in waiters:
                d.callback(None)

    def stop(self) -> defer.Deferred:
        """Stop listening and drop every connection; fires when all are gone."""
        ds = []
        if self._port is not None:
            ds.append(defer.maybeDeferred(self._port.stopListening))
            self._port = None
        if self._protocols:
            d = defer.Deferred()
            self._lost_waiters.append(d)
            ds.append(d)
            for p in list(self._protocols):
                if p.transport is not None:
                    p.transport.abortConnection()
        return defer.gatherResults(ds)
