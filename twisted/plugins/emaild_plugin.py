"""
twistd plugin: C{twistd -n emaild [--config PATH]}.

Kept tiny and free of emaild imports at module level: twistd imports every
plugin module just to list them.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", None,
         "TOML configuration file (default: $EMAILD_CONFIG, else built-in defaults)"],
    ]


@implementer(IServiceMaker, IPlugin)
class EmaildServiceMaker:
    tapname = "emaild"
    description = "Course e-mail daemon: outbox and sender, links, group relay."
    options = Options

    def makeService(self, options):  # noqa: N802 (twistd API)
        from emaild.service import build_service

        return build_service(options["config"])


serviceMaker = EmaildServiceMaker()
