"""
The bench's "authentication off" daemon: the real emaild service tree
(SMTP server, relay processor, sender, web app, the same code and config),
with one part swapped in the composition root: no sender authentication.
The inbound handler then does what it did before SPF, DKIM and DMARC
existed (a post's envelope sender or From must be the member's address),
so an accepted post costs no DNS lookup, no SPF/DKIM evaluation and no
Authentication-Results.  This is the bench's, for comparison only: the
daemon has no setting that turns sender authentication off.

    EMAILD_CONFIG=bench.toml twistd -n --pidfile= -y bench/emaild_without_sender_auth.py
"""

from __future__ import annotations

import os

from twisted.application import service

from emaild.config import load_config
from emaild.homeserver import HomeServer
from emaild.service import Emaild


class HomeServerWithoutSenderAuthentication(HomeServer):
    def get_sender_authentication(self):
        return None


config = load_config(os.environ["EMAILD_CONFIG"])
application = service.Application("emaild (bench: without sender authentication)")
Emaild(config, hs=HomeServerWithoutSenderAuthentication(config)).setServiceParent(application)
