"""
The composition root: one L{HomeServer} per process builds every part of
emaild once, on first use, and hands it out (Synapse's C{HomeServer} is the
model).  The service tree (L{emaild.service}), the web app and the CLI take
what they need from it; nothing else constructs a store, a L{Links} or an
L{Outbox}.

    hs = HomeServer(config, reactor)
    outbox = hs.get_outbox()            # the same object on every call

Tests that already hold an open database pass it in
(C{HomeServer(config, reactor, database=db)}); the process then neither
starts an embedded PostgreSQL nor closes that database.

Parts depend only downwards: stores on the database, services (links,
outbox, notifier, handlers) on stores, the service tree and the web app on
all of them.  Imports are inside the getters so that importing this module
costs nothing and creates no cycle.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from twisted.internet import threads

from emaild.readiness import Readiness

if TYPE_CHECKING:
    from emaild.db.database import Database
    from emaild.db.embedded import EmbeddedPostgres
    from emaild.links.service import Links
    from emaild.outbound.outbox import Outbox

T = TypeVar("T")


def built_once(getter: Callable[[HomeServer], T]) -> Callable[[HomeServer], T]:
    """
    Make a C{get_x} method build its part on the first call and return that
    same part on every later one.
    """
    name = getter.__name__

    @functools.wraps(getter)
    def get(self: HomeServer) -> T:
        if name not in self._parts:
            if name in self._building:
                raise RuntimeError(f"{name} depends on itself")
            self._building.add(name)
            try:
                self._parts[name] = getter(self)
            finally:
                self._building.discard(name)
        return self._parts[name]

    return get


class HomeServer:
    """
    @param database: an already open L{Database} to use instead of the
        configured one (tests); its owner opens and closes it.
    """

    def __init__(self, config, reactor=None, *, database: Database | None = None):
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self._parts: dict[str, Any] = {}
        self._building: set[str] = set()
        self._given_database = database
        #: whether this process must open (and later close) the database
        self.owns_database = database is None

    def get_config(self):
        return self.config

    def get_reactor(self):
        return self.reactor

    @built_once
    def get_readiness(self) -> Readiness:
        return Readiness()

    # -- the database ------------------------------------------------------
    @built_once
    def get_embedded_postgres(self) -> EmbeddedPostgres | None:
        """
        The embedded server under the state directory, or None when a
        database URL is configured (or a database was given).
        """
        if self._given_database is not None or self.config["database"]["url"]:
            return None
        from emaild.db.embedded import EmbeddedPostgres

        return EmbeddedPostgres(self.config.state_dir / "postgres")

    @built_once
    def get_database(self) -> Database:
        """
        The database; not yet open (see L{open_database}), except a given one.
        For the embedded server the DSN is known once it has started.
        """
        if self._given_database is not None:
            return self._given_database
        from emaild.db.database import Database

        database = self.config["database"]
        return Database(self.reactor, database["url"], database["pool_size"],
                        prepare=database["prepared_statements"])

    async def open_database(self, migrate: bool = True) -> None:
        """
        Start the embedded PostgreSQL if there is one, connect, and apply
        the migrations (under their advisory lock).
        """
        from emaild.db import migrations

        readiness = self.get_readiness()
        db = self.get_database()
        embedded = self.get_embedded_postgres()
        if embedded is not None:
            readiness.starting("starting the embedded PostgreSQL")
            db.dsn = await threads.deferToThread(embedded.start)
        readiness.starting("connecting to the database")
        await db.start()
        if migrate:
            readiness.starting("migrating the database")
            await migrations.migrate(db)

    async def close_database(self) -> None:
        """
        Close the database, then stop the embedded PostgreSQL when this
        process owns it (see L{emaild.db.embedded.EmbeddedPostgres.release}).
        """
        if not self.owns_database:
            return
        self.get_database().close()
        embedded = self.get_embedded_postgres()
        if embedded is not None:
            await threads.deferToThread(embedded.release)

    # -- stores: one per part's tables ---------------------------------------
    @built_once
    def get_outbox_store(self):
        from emaild.outbound.store import OutboxStore

        return OutboxStore(self.get_database())

    @built_once
    def get_people_store(self):
        from emaild.people.store import PeopleStore

        return PeopleStore(self.get_database())

    @built_once
    def get_memberships(self):
        from emaild.people.memberships import Memberships

        return Memberships(self.get_database())

    @built_once
    def get_link_store(self):
        from emaild.links.store import LinkStore

        return LinkStore(self.get_database())

    @built_once
    def get_group_store(self):
        from emaild.groups.store import GroupStore

        return GroupStore(self.get_database())

    @built_once
    def get_inbound_store(self):
        from emaild.inbound.store import InboundStore

        return InboundStore(self.get_database())

    @built_once
    def get_session_store(self):
        from emaild.web.sessions import SessionStore

        return SessionStore(self.get_database())

    @built_once
    def get_fresh_link_requests(self):
        from emaild.web.routes_links import FreshLinkRequests

        return FreshLinkRequests(self.get_database())

    @built_once
    def get_nonce_store(self):
        from emaild.people.lti import NonceStore

        return NonceStore(self.get_database(), self.config["lti"]["timestamp_window"])

    @built_once
    def get_notify_store(self):
        from emaild.notify.store import NotifyStore

        return NotifyStore(self.get_database())

    @built_once
    def get_digest_store(self):
        from emaild.digest.store import DigestStore

        return DigestStore(self.get_database())

    # -- services built on the stores ----------------------------------------
    @built_once
    def get_metrics(self):
        """One registry for the whole process, served at /metrics."""
        from emaild.metrics import Metrics

        return Metrics()

    @built_once
    def get_links(self) -> Links:
        from emaild.links.service import Links

        return Links(self.config, self.get_link_store(), reactor=self.get_reactor())

    @built_once
    def get_reply_addresses(self):
        from emaild.groups.addresses import reply_addresses

        return reply_addresses(self.config)

    @built_once
    def get_composer(self):
        from emaild.outbound.outbox import make_composer

        return make_composer(self.config, links=self.get_links())

    @built_once
    def get_outbox(self) -> Outbox:
        from emaild.outbound.outbox import Outbox

        return Outbox(self.config, self.get_outbox_store(), links=self.get_links(),
                      people=self.get_people_store(), composer=self.get_composer())

    @built_once
    def get_notifier(self):
        """'X is active in your group' (the web app and the API call its visited())."""
        from emaild.notify.notifier import Notifier

        return Notifier(self.config, self.get_notify_store(), self.get_group_store(),
                        self.get_people_store(), self.get_outbox(), clock=self.reactor.seconds,
                        outbox_store=self.get_outbox_store(),
                        session_store=self.get_session_store())

    @built_once
    def get_transport(self):
        """The relay: a maildir folder, or an SMTP submission server."""
        relay = self.config["relay"]
        if relay["transport"] == "maildir":
            from emaild.outbound.maildir import MaildirTransport

            return MaildirTransport(self.reactor, self.config.state_dir / "outbox")
        from emaild.outbound.smtp import SMTPTransport

        return SMTPTransport(
            self.reactor,
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

    @built_once
    def get_inbound_handler(self):
        from emaild.inbound.handler import InboundHandler

        return InboundHandler(self.get_inbound_store(), self.get_group_store(),
                              self.get_reply_addresses(), self.get_links(),
                              self.get_outbox_store(),
                              max_posts_per_hour=self.config["groups"]["max_posts_per_hour"],
                              sender_auth=self.get_sender_authentication(),
                              reactor=self.reactor)

    # -- sender authentication of group posts, and holds ----------------------
    @built_once
    def get_resolver(self):
        """DNS for SPF, DKIM and DMARC ([dns]): twisted.names, cached."""
        from emaild.inbound.auth.dns import Resolver

        return Resolver(self.reactor, self.config["dns"]["servers"],
                        self.config["dns"]["timeout"])

    @built_once
    def get_hold_store(self):
        from emaild.inbound.holds_store import HoldStore

        return HoldStore(self.get_database())

    @built_once
    def get_holds(self):
        """Posts held until their member confirms them (the question, the answer)."""
        from emaild.inbound.holds import Holds

        return Holds(self.config, self.get_hold_store(), self.get_links(),
                     self.get_group_store(), self.get_composer())

    @built_once
    def get_hold_expiry(self):
        from emaild.inbound.holds import HoldExpiry

        return HoldExpiry(self.reactor, self.get_hold_store())

    @built_once
    def get_sender_authentication(self):
        """What the inbound handler asks about every group post."""
        from emaild.inbound.auth.policy import SenderAuthentication
        from emaild.inbound.auth.verdict import Authenticator

        smtp = self.config["smtp"]
        return SenderAuthentication(Authenticator(self.get_resolver()), self.get_holds(),
                                    self.config["groups"]["unauthenticated"],
                                    smtp["hostname"] or smtp["relay_domain"],
                                    smtp["relay_domain"])

    @built_once
    def get_launch_verifier(self):
        from emaild.people.lti import LaunchVerifier

        return LaunchVerifier(self.config, self.get_nonce_store(), clock=self.reactor.seconds)

    @built_once
    def get_lti13(self):
        """LTI 1.3: the tool's keys, the platforms' JWKS, logins and launches."""
        from emaild.people.lti13 import Lti13
        from emaild.people.lti13_jwks import JwksCache
        from emaild.people.lti13_states import LoginStates

        lti13 = self.config["lti13"]
        return Lti13(self.config,
                     states=LoginStates(self.get_database(), lti13["state_ttl"]),
                     jwks=JwksCache(self.reactor, timeout=lti13["jwks_timeout"]),
                     keys=self.get_tool_keys(), rosters=self.get_rosters())

    @built_once
    def get_lti_limits(self):
        """The per-client limit on LTI logins and launches ([lti] client_rate)."""
        from emaild.web.lti_limits import ClientLimits

        lti = self.config["lti"]
        return ClientLimits(lti["client_rate"], lti["client_burst"], clock=self.reactor.seconds)

    @built_once
    def get_tool_keys(self):
        """The tool's LTI 1.3 signing keys, under C{state_dir/lti/keys}."""
        from emaild.people.lti13_keys import ToolKeys

        return ToolKeys(self.config.state_dir / "lti" / "keys")

    @built_once
    def get_rosters(self):
        """Course rosters from LTI 1.3 platforms (NRPS)."""
        from emaild.people.lti13_nrps import Rosters

        return Rosters(self.reactor, self.config, self.get_database(), self.get_tool_keys(),
                       self.get_group_store())

    @built_once
    def get_sessions(self):
        from emaild.web.sessions import Sessions

        return Sessions(self.config, self.get_session_store())

    @built_once
    def get_digest_runner(self):
        from emaild.digest.scheduler import DigestRunner

        return DigestRunner(self.config, self.get_database(), self.get_outbox(),
                            self.get_digest_store(), self.get_people_store(),
                            clock=self.reactor.seconds)

    @built_once
    def get_announcements(self):
        from emaild.digest.announce import Announcements

        return Announcements(self.get_outbox(), self.get_digest_store(),
                             self.get_group_store(), self.get_people_store(),
                             self.get_outbox_store())

    # -- the services of the daemon ------------------------------------------
    @built_once
    def get_sender(self):
        from emaild.outbound.sender import Sender

        return Sender(self.reactor, self.get_outbox_store(), self.get_transport(), self.config,
                      metrics=self.get_metrics())

    @built_once
    def get_relay_processor(self):
        from emaild.inbound.relay import RelayProcessor

        return RelayProcessor(self.reactor, self.config, self.get_inbound_store(),
                              self.get_reply_addresses(), self.get_links(), self.get_outbox(),
                              metrics=self.get_metrics(), inflow=self.get_inflow())

    @built_once
    def get_inflow(self):
        """The inbound server's in-flow control, fed by the relay processor."""
        from emaild.config import ConfigError
        from emaild.inbound.inflow import InFlow

        smtp = self.config["smtp"]
        if smtp["in_flow_refuse"] and smtp["in_flow_refuse"] <= smtp["in_flow_backlog"]:
            raise ConfigError("smtp.in_flow_refuse", "must be above smtp.in_flow_backlog (or 0)")
        in_flow = InFlow(self.reactor, backlog=smtp["in_flow_backlog"],
                         max_delay=smtp["in_flow_delay"], refuse=smtp["in_flow_refuse"])
        self.get_metrics().watch_in_flow(in_flow)
        return in_flow

    @built_once
    def get_error_reporter(self):
        """Mails logged errors to the [admin] addresses."""
        from emaild.notify.errors import ErrorReporter

        return ErrorReporter(self.config, self.get_outbox(), self.reactor)

    @built_once
    def get_digest_scheduler(self):
        from emaild.digest.scheduler import DigestScheduler

        return DigestScheduler(self.reactor, self.get_digest_runner())

    @built_once
    def get_web_app(self):
        from emaild.web.app import WebApp

        return WebApp(self)
