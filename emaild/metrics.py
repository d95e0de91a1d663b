"""
Prometheus metrics of one emaild process, in its own registry (never the
global one: two apps in one process, as in the tests, must not share counts).

The parts that act (sender, inbound SMTP server, relay processor) increment
counters on the L{Metrics} they were given; the queue depth is not kept in
memory but read from the database at scrape time (one C{GROUP BY}), so it is
the same whichever process is scraped.
"""

from __future__ import annotations

from typing import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: enqueue-to-sent, seconds: from "the relay took it at once" to "a day of retries"
LATENCY_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.queue_depth = Gauge(
            "emaild_outbox_messages", "Outbox rows by state and QoS class (read at scrape time)",
            ["state", "qos"], registry=r)
        self.sent = Counter("emaild_outbound_sent", "Messages the relay accepted", ["qos"],
                            registry=r)
        self.failed = Counter("emaild_outbound_failed",
                              "Messages that failed for good (permanent reply or attempts "
                              "used up)", ["qos"], registry=r)
        self.retried = Counter("emaild_outbound_retried",
                               "Delivery attempts that will be retried later", ["qos"],
                               registry=r)
        self.suppressed = Counter("emaild_outbound_suppressed",
                                  "Messages not sent at claim time: address suppressed or "
                                  "person opted out", registry=r)
        self.throttled = Counter("emaild_outbound_throttled",
                                 "Relay replies saying we send too fast", registry=r)
        self.send_latency = Histogram(
            "emaild_outbound_send_latency_seconds",
            "Time from enqueue to the relay accepting the message",
            buckets=LATENCY_BUCKETS, registry=r)
        self.smtp_sessions = Counter(
            "emaild_inbound_smtp_sessions",
            "Inbound SMTP connections: accepted, or refused (too_busy, not_ready, ...)",
            ["result"], registry=r)
        self.smtp_messages = Counter(
            "emaild_inbound_smtp_messages",
            "Inbound messages at the end of DATA: accepted (stored, 250) or refused",
            ["result"], registry=r)
        self.relay_copies = Counter("emaild_relay_copies",
                                    "Copies of group posts queued for members", registry=r)

    # -- hooks -----------------------------------------------------------------
    def watch_in_flow(self, in_flow) -> None:
        """
        Export the inbound in-flow control (L{emaild.inbound.inflow.InFlow}):
        the relay backlog it sees, and the transactions it delayed and
        refused, read at scrape time.
        """
        self.registry.register(_InFlowCollector(in_flow))

    # -- exposition ------------------------------------------------------------
    def render(self, counts: Mapping[str, Mapping[str, int]]) -> bytes:
        """
        The text exposition, with the queue depth from C{counts}
        (L{OutboxStore.counts}: C{{state: {qos: n}}}).  Synchronous, so no
        other scrape can interleave between setting the gauge and reading it.
        """
        self.queue_depth.clear()
        for state, per_class in counts.items():
            for qos, n in per_class.items():
                self.queue_depth.labels(state, qos).set(n)
        return generate_latest(self.registry)


class _InFlowCollector:
    """The in-flow control's figures, as they are when scraped."""

    def __init__(self, in_flow):
        self.in_flow = in_flow

    def describe(self):
        return list(self.collect())

    def collect(self):
        yield GaugeMetricFamily("emaild_inbound_relay_backlog",
                                "Received rows waiting for the relay processor, as the "
                                "in-flow control sees them", value=self.in_flow.backlog)
        yield CounterMetricFamily("emaild_inbound_in_flow_delayed",
                                  "New inbound transactions (MAIL FROM) delayed because the "
                                  "relay was behind", value=self.in_flow.delayed)
        yield CounterMetricFamily("emaild_inbound_in_flow_refused",
                                  "New inbound transactions answered 451 4.3.2 because the "
                                  "relay was far behind", value=self.in_flow.refused)
