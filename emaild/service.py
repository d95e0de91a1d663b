"""
The service tree of one emaild process, built from one L{HomeServer}.

    Emaild (MultiService)
      ├── database   (DatabaseService: opens and migrates the database, then
      │   │           starts its children; stops them before it closes it)
      │   ├── relay processor   (inbound posts -> copies in the outbox)
      │   ├── hold expiry       (unanswered "Did you send this?" -> ignored)
      │   ├── error reporter    (logged errors -> mail to [admin] addresses)
      │   ├── rosters           (LTI 1.3 roster syncs; cut short when stopping)
      │   ├── digest            (weekly updates, when [digest] enabled)
      │   └── sender            (outbox -> relay)
      ├── http       (Klein site on the [http] endpoint)
      └── smtp       (inbound ESMTP on the [smtp] endpoint: the group relay)

Listening ports are children, so C{twistd --uid/--gid} binds them as root in
privilegedStartService before dropping privileges.  They accept connections
at once, but until every part runs (L{emaild.readiness}) the web answers 503
with C{Retry-After} and the SMTP server C{421 4.3.2}.

Twisted's contract holds throughout: C{startService} returns nothing (the
database service opens the database in the background and reports through
the readiness state), C{stopService} may return a Deferred.  Shutdown is
ordered, not Twisted's all-at-once: stop accepting, then the database
service stops its children in reverse order (the sender first: it drains
its deliveries in flight, bounded by its own grace period), closes the
database and stops the embedded PostgreSQL this process owns.
"""

from __future__ import annotations

import gc

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import Logger

from emaild.homeserver import HomeServer

log = Logger()


def start_failed(hs: HomeServer, error: Exception) -> None:
    """
    Start-up failed for good: say why, and stop the process (twistd exits).
    """
    reason = " ".join(str(error).split()) or type(error).__name__
    hs.get_readiness().mark_failed(reason)
    log.critical("emaild cannot start: {error}", error=reason)
    reactor = hs.get_reactor()
    if reactor.running:
        reactor.stop()


class DatabaseService(service.MultiService):
    """
    A MultiService whose children need the database: they start once it is
    open and migrated, and stop before it closes.
    """

    def __init__(self, hs: HomeServer):
        super().__init__()
        self.setName("database")
        self.hs = hs
        self.readiness = hs.get_readiness()
        #: the open-and-start work of the current start (never fails)
        self.opening: defer.Deferred | None = None

    def startService(self):  # noqa: N802
        # not MultiService's: the children wait for the database
        service.Service.startService(self)
        self.opening = defer.ensureDeferred(self._open())

    async def _open(self) -> None:
        try:
            if self.hs.owns_database:
                await self.hs.open_database()
            if not self.running:  # stopped while the database was opening
                return
            self.readiness.starting("starting services")
            for child in self:
                child.startService()
            # children with asynchronous start-up (LISTEN) say when it is done
            await defer.gatherResults([child.starting for child in self
                                       if getattr(child, "starting", None) is not None])
        except Exception as e:
            start_failed(self.hs, e)
            return
        if not self.running:
            return
        self.readiness.mark_ready()
        log.info("emaild ready: transport {t}, rate {r}/s",
                 t=self.hs.get_transport().name, r=self.hs.get_config()["relay"]["rate"])

    def stopService(self):  # noqa: N802
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.opening is not None:
            # a thread may be starting PostgreSQL: let it finish, then undo
            await self.opening
        for child in reversed(list(self)):
            if child.running:
                try:
                    await defer.maybeDeferred(child.stopService)
                except Exception:
                    log.failure("{name} did not stop cleanly", name=child.name)
        await self.hs.close_database()


class Emaild(service.MultiService):
    """
    The daemon.  C{hs} (default: a new L{HomeServer} of C{config}) owns the
    parts; the tree only starts and stops them.
    """

    def __init__(self, config, reactor=None, hs: HomeServer | None = None):
        super().__init__()
        self.hs = hs = hs or HomeServer(config, reactor)
        self.config = config
        self.reactor = hs.get_reactor()
        self.readiness = hs.get_readiness()
        # the parts, by name, for tests and for the web's /healthz
        self.db = hs.get_database()
        self.outbox = hs.get_outbox()
        self.metrics = hs.get_metrics()
        self.sender = hs.get_sender()
        self.relay = hs.get_relay_processor()
        self.errors = hs.get_error_reporter()
        self.digest = hs.get_digest_scheduler()
        self.notifier = hs.get_notifier()

        self.database = DatabaseService(hs)
        self.database.setServiceParent(self)
        # (rosters: LTI 1.3 NRPS syncs, cut short before the database closes)
        children = [self.relay, hs.get_hold_expiry(), self.errors, hs.get_rosters()]
        if config["digest"]["enabled"]:
            children.append(self.digest)
        children.append(self.sender)  # last to start, first to stop: it drains
        for child in children:
            child.setServiceParent(self.database)

        self.web = hs.get_web_app()
        self.web.parts["sender"] = self.sender
        listener = strports.service(config["http"]["endpoint"], self.web.site())
        listener.setName("http")
        listener.setServiceParent(self)

        from emaild.inbound.server import inbound_listener

        self.smtp = inbound_listener(config, hs.get_inbound_handler(), self.reactor,
                                     metrics=self.metrics, is_ready=self.readiness.is_ready)
        self.smtp.factory.inflow = hs.get_inflow()
        self.smtp.setName("smtp")
        self.smtp.setServiceParent(self)

    @property
    def ready(self) -> defer.Deferred:
        """
        A new Deferred that fires once every part runs (fails if start-up
        fails or the daemon stops first).
        """
        return self.readiness.when_ready()

    def startService(self):  # noqa: N802
        from emaild.inbound.server import use_self_signed

        try:
            # here, not in __init__: under `twistd --uid` this runs after
            # privileges were dropped, so the files belong to the service user
            self.config.state_dir.mkdir(parents=True, exist_ok=True)
            use_self_signed(self.config, self.smtp)
            self.hs.get_tool_keys().ensure()  # the LTI 1.3 signing key, made on first start
        except Exception as e:
            service.Service.startService(self)
            start_failed(self.hs, e)
            return
        super().startService()

    def stopService(self):  # noqa: N802
        service.Service.stopService(self)
        self.readiness.mark_stopping()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        listeners = [s for s in self if s is not self.database and s.running]
        await defer.gatherResults([defer.maybeDeferred(s.stopService) for s in listeners])
        if self.database.running:
            await self.database.stopService()
        self.hs.get_resolver().close()  # its DNS connections
        log.info("emaild stopped")


def freeze_start_up_heap(_=None) -> None:
    """
    Put everything alive once the daemon is ready (modules, compiled
    templates, the parts: about 85,000 objects) out of the cyclic garbage
    collector's reach (C{gc.freeze}).  Otherwise every full collection
    walks all of it again: pauses of 50-220 ms several times per 10 s under
    load, the tail of a login-link click (bench/RESULTS-web.md).  Objects
    made later are collected as before.  Once per process, so only
    L{build_service} (twistd) does it, not a test that starts many daemons.
    """
    gc.collect()
    gc.freeze()


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
    daemon = Emaild(config, reactor)
    # the daemon process's heap, once ready (a failed start-up is logged elsewhere)
    daemon.ready.addCallbacks(freeze_start_up_heap, lambda _: None)
    return daemon
