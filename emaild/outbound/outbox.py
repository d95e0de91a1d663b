"""
The outbox as the rest of emaild sees it: render a template for each
recipient and queue the results.  (The CLI, the web app and the API all
enqueue through here.)
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import attrs

from emaild.outbound.compose import ComposeError, Composer
from emaild.outbound.store import OutboxStore
from emaild.templating import environment


@attrs.frozen
class Rejected:
    #: position in the input (0-based; the CLI adds the CSV line)
    index: int
    recipient: str
    reason: str


@attrs.frozen
class EnqueueReport:
    ids: list[int]
    rejected: list[Rejected]


def make_composer(config, **kwargs) -> Composer:
    return Composer(
        environment(config["templates"]["dir"], "email"),
        relay_domain=config["smtp"]["relay_domain"],
        from_address=config.from_address,
        from_name=config["mail"]["from_name"],
        globals_={"site_url": config["http"]["public_url"]},
        **kwargs,
    )


class Outbox:
    def __init__(self, config, store: OutboxStore, composer: Composer | None = None):
        self.config = config
        self.store = store
        self.composer = composer or make_composer(config)

    async def enqueue(
        self,
        template: str,
        recipients: Iterable[tuple[str, Mapping[str, Any]]],
        qos: str | None = None,
        batch: str | None = None,
    ) -> EnqueueReport:
        """
        Render C{template} for every (address, context) and queue the ones
        that rendered, in one transaction.  Those that did not are returned
        with the reason; nothing is queued for them.

        @raise ComposeError: the template itself is missing or broken, or
            C{qos} names no configured class (nothing is queued).
        """
        if qos is not None and qos not in self.config.qos:
            raise ComposeError(f"no QoS class {qos!r}; configured: {', '.join(sorted(self.config.qos))}")
        qos_class = self.config.qos_class(qos)
        self.composer.templates(template)  # fail once, early, for a bad template
        rendered, rejected = [], []
        for index, (address, context) in enumerate(recipients):
            try:
                rendered.append(self.composer.render(template, address, context))
            except ComposeError as e:
                rejected.append(Rejected(index, str(address), str(e)))
        ids = await self.store.enqueue(template, qos_class, rendered, batch) if rendered else []
        return EnqueueReport(ids, rejected)
