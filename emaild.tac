# twistd -ny emaild.tac  — the configuration file comes from $EMAILD_CONFIG
# (unset: built-in defaults: embedded PostgreSQL and a maildir outbox under ./var).
import os

from twisted.application import service

from emaild.service import build_service

application = service.Application("emaild")
build_service(os.environ.get("EMAILD_CONFIG")).setServiceParent(application)
