"""
The service tree of one emaild process.

    Emaild (MultiService)
      ├── web listener   (Klein site on [http] endpoint)
      ├── smtp listener  (inbound ESMTP on [smtp] endpoint: the group relay)
      └── (after the database is up) Sender, RelayProcessor, ErrorReporter and
          the weekly update scheduler (DigestScheduler, when [digest] enabled)

The group activity notifier lives in the web app (C{self.web.notifier}).

Listening ports are children, so C{twistd --uid/--gid} binds them as root in
privilegedStartService before dropping privileges.  Everything that needs the
database starts once it is open and migrated; shutdown runs in the reverse
order: sender drains, listeners stop, the database closes last.
"""

from __future__ import annotations

from twisted.application import service, strports
from twisted.internet import defer, threads
from twisted.logger import Logger

from emaild.db.database import Database
from emaild.db.embedded import EmbeddedPostgres
from emaild.db.migrations import migrate
from emaild.digest.scheduler import DigestScheduler
from emaild.groups.addresses import reply_addresses
from emaild.groups.store import GroupStore
from emaild.inbound.auth.policy import sender_authentication
from emaild.inbound.handler import InboundHandler
from emaild.inbound.holds import HoldExpiry
from emaild.inbound.holds_store import HoldStore
from emaild.inbound.relay import RelayProcessor
from emaild.inbound.server import inbound_listener, use_self_signed
from emaild.inbound.store import InboundStore
from emaild.metrics import Metrics
from emaild.notify.errors import ErrorReporter
from emaild.outbound.maildir import MaildirTransport
from emaild.outbound.outbox import Outbox
from emaild.outbound.sender import Sender
from emaild.outbound.store import OutboxStore
from emaild.web.app import WebApp

log = Logger()


def make_transport(config, reactor):
    relay = config["relay"]
    if relay["transport"] == "maildir":
        return MaildirTransport(reactor, config.state_dir / "outbox")
    from emaild.outbound.smtp import SMTPTransport

    return SMTPTransport(
        reactor,
        host=relay["host"],
        port=relay["port"],
        tls=relay["tls"],
        username=relay["username"] or None,
        password=relay["password"] or None,
        connections=relay["connections"],
        helo_name=relay["helo_name"] or None,
        connect_timeout=relay["connect_timeout"],
        reply_timeout=relay["reply_timeout"],
        data_timeout=relay["reply_timeout"],
        trust_roots_pem=relay["ca_file"] or None,
    )


def database_for(config, reactor) -> tuple[Database, EmbeddedPostgres | None]:
    """
    The configured database, or an embedded one under the state directory
    (its DSN is known once it has started).
    """
    url = config["database"]["url"]
    embedded = None if url else EmbeddedPostgres(config.state_dir / "postgres")
    return Database(reactor, url, config["database"]["pool_size"]), embedded


async def open_database(db: Database, embedded: EmbeddedPostgres | None) -> None:
    if embedded is not None:
        db.dsn = await threads.deferToThread(embedded.start)
    await db.start()
    await migrate(db)


class Emaild(service.MultiService):
    def __init__(self, config, reactor=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        self.db, self.embedded = database_for(config, reactor)
        self.store = OutboxStore(self.db)
        self.outbox = Outbox(config, self.store)
        self.transport = make_transport(config, reactor)
        #: one registry for the whole process, served at /metrics
        self.metrics = Metrics()
        self.sender = Sender(reactor, self.store, self.transport, config, metrics=self.metrics)
        self.web = WebApp(reactor, config, self.db, parts={"sender": self.sender},
                          outbox=self.outbox)
        self.web.metrics = self.metrics
        listener = strports.service(config["http"]["endpoint"], self.web.site())
        listener.setName("http")
        listener.setServiceParent(self)
        self.inbound = InboundStore(self.db)
        addresses = reply_addresses(config)
        # SPF/DKIM/DMARC of group posts, and holds ([dns], [groups] unauthenticated)
        self.sender_auth = sender_authentication(config, reactor, self.db, self.outbox.links,
                                                 self.outbox.composer)
        handler = InboundHandler(self.inbound, GroupStore(self.db), addresses,
                                 self.outbox.links, self.store,
                                 max_posts_per_hour=config["groups"]["max_posts_per_hour"],
                                 sender_auth=self.sender_auth)
        self.hold_expiry = HoldExpiry(reactor, HoldStore(self.db))
        self.smtp = inbound_listener(config, handler, reactor, metrics=self.metrics)
        self.smtp.setName("smtp")
        self.smtp.setServiceParent(self)
        self.relay = RelayProcessor(reactor, config, self.inbound, addresses,
                                    self.outbox.links, self.outbox, metrics=self.metrics)
        #: "X is active in your group" (web app and API call its visited())
        self.notifier = self.web.notifier
        #: mails logged errors to [admin] addresses
        self.errors = ErrorReporter(config, self.outbox, reactor)
        self.digest = DigestScheduler(reactor, config, self.db, self.outbox)
        #: fires when the database is open and the sender runs
        self.ready: defer.Deferred | None = None

    def startService(self):  # noqa: N802
        super().startService()
        self.ready = defer.ensureDeferred(self._start())
        self.ready.addErrback(self._start_failed)

    async def _start(self):
        # created here, not in __init__: under `twistd --uid` this runs after
        # privileges were dropped, so the files belong to the service user
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.web.lti13.keys.ensure()  # LTI 1.3: the tool's signing key, made on first start
        use_self_signed(self.config, self.smtp)
        await open_database(self.db, self.embedded)
        await self.sender.startService()
        await self.relay.startService()
        self.hold_expiry.startService()
        self.errors.startService()
        if self.config["digest"]["enabled"]:
            self.digest.startService()
        log.info("emaild ready: transport {t}, rate {r}/s", t=self.transport.name,
                 r=self.config["relay"]["rate"])

    def _start_failed(self, failure):
        log.critical("emaild cannot start: {error}", error=failure.getErrorMessage())
        if self.reactor.running:
            self.reactor.stop()
        return None

    def stopService(self):  # noqa: N802
        return defer.ensureDeferred(self._stop())

    async def _stop(self):
        if self.ready is not None and not self.ready.called:
            await self.ready
        if self.errors.running:
            await self.errors.stopService()
        if self.digest.running:  # its run in progress stops after the current chunk
            await self.digest.stopService()
        if self.hold_expiry.running:
            self.hold_expiry.stopService()
        if self.relay.running:
            await self.relay.stopService()
        if self.sender.running:
            await self.sender.stopService()
        await super().stopService()
        self.sender_auth.close()
        self.db.close()
        if self.embedded is not None and self.embedded.started_here:
            await threads.deferToThread(self.embedded.stop)
        log.info("emaild stopped")


def build_service(config_path: str | None = None, reactor=None) -> Emaild:
    """
    The daemon's service from the config file at C{config_path} (default:
    C{$EMAILD_CONFIG}, else built-in defaults).  A bad configuration exits
    with a message naming the key.
    """
    import os

    from emaild.config import ConfigError, load_config

    path = config_path or os.environ.get("EMAILD_CONFIG") or None
    try:
        config = load_config(path)
    except ConfigError as e:
        raise SystemExit(f"emaild: configuration error: {e}") from None
    return Emaild(config, reactor)
