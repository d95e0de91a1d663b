"""
Error reports: errors logged are counted in memory and mailed to
[admin] addresses at most once per fingerprint per report_interval, through
the real outbox into a real database.
"""

from __future__ import annotations

import email

from twisted.internet import task
from twisted.logger import Logger, LogPublisher, globalLogPublisher

from emaild.notify.errors import FLUSH_INTERVAL, OVERFLOW, ErrorReporter, fingerprint
from emaild.outbound.outbox import Outbox
from tests.support import DatabaseTestCase
from tests.web.test_web_links import async_test, text_of


def fail_parsing(logger, i):
    try:
        int(f"row {i}")
    except ValueError:
        logger.failure("Could not parse row {i}", i=i)


def fail_lookup(logger, i):
    try:
        {}[f"key {i}"]
    except KeyError:
        logger.failure("Could not find key {i}", i=i)


class ReporterTestCase(DatabaseTestCase):
    addresses = ["ops@example.org"]

    def make_reporter(self, publisher=None, **kwargs):
        self.cfg = self.config(admin={"addresses": list(self.addresses),
                                      "report_interval": "1h"})
        self.outbox = self.homeserver(self.cfg).get_outbox()
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.publisher = publisher if publisher is not None else LogPublisher()
        self.logger = Logger(namespace="emaild.somepart", observer=self.publisher)
        reporter = ErrorReporter(self.cfg, self.outbox, self.clock, publisher=self.publisher,
                                 **kwargs)
        reporter.startService()
        self.addCleanup(lambda: reporter.stopService() if reporter.running else None)
        self.reporter = reporter
        return reporter

    async def tick(self, seconds: float = FLUSH_INTERVAL):
        """Let time pass and wait for the flush it started."""
        self.clock.advance(seconds)
        if self.reporter._flushing is not None:
            await self.reporter._flushing

    def reports(self):
        return self.query("SELECT recipient, qos, kind, person_id, subject, body, batch"
                          " FROM outbox WHERE template = 'error_report' ORDER BY id")


class StormTests(ReporterTestCase):
    @async_test
    async def test_a_storm_is_one_report_with_the_count(self):
        self.make_reporter()
        for i in range(1000):
            fail_parsing(self.logger, i)
        self.assertEqual(len(self.reporter.entries), 1)
        self.assertEqual(self.reports(), [])  # nothing is queued by the observer
        await self.tick()
        ((recipient, qos, kind, person_id, subject, body, batch),) = self.reports()
        self.assertEqual((recipient, qos, kind, person_id), ("ops@example.org", "transactional",
                                                             None, None))
        self.assertEqual(subject, "[emaild error] ValueError in digest/test_error_reports.py"
                                  ":fail_parsing (1000 times)")
        self.assertTrue(batch.startswith("error-report:"))
        message = email.message_from_bytes(bytes(body))
        self.assertIsNone(message["List-Unsubscribe"])
        text = text_of(body)
        self.assertIn("logged this error 1000 times", text)
        self.assertIn("First:       2023-11-14 22:13:20 UTC", text)
        self.assertIn("Last:        2023-11-14 22:13:20 UTC", text)
        self.assertIn("Could not parse row 999", text)  # the latest one
        self.assertIn("invalid literal for int() with base 10: 'row 999'", text)
        self.assertIn("Traceback", text)
        self.assertNotIn("row 998", text)
        html = next(p for p in message.walk() if p.get_content_type() == "text/html")
        self.assertIn("<pre>", html.get_payload(decode=True).decode())

        # quiet: nothing more, however long
        await self.tick()
        await self.tick(7200)
        self.assertEqual(len(self.reports()), 1)

    @async_test
    async def test_more_errors_make_one_more_report_after_the_interval(self):
        self.make_reporter()
        fail_parsing(self.logger, 1)
        await self.tick()
        self.assertEqual(len(self.reports()), 1)
        self.clock.advance(60)
        for i in range(5):
            fail_parsing(self.logger, i)
            self.clock.advance(60)
        await self.tick()
        self.assertEqual(len(self.reports()), 1)  # within the hour: waits
        await self.tick(3600 - 6 * 60)
        self.assertEqual(len(self.reports()), 2)
        text = text_of(self.reports()[1][5])
        self.assertIn("logged this error 5 times since the last report", " ".join(text.split()))
        self.assertIn("First:       2023-11-14 22:14:30 UTC", text)
        self.assertIn("Last:        2023-11-14 22:18:30 UTC", text)
        await self.tick(3600)
        self.assertEqual(len(self.reports()), 2)

    @async_test
    async def test_different_errors_make_different_reports(self):
        self.make_reporter()
        for i in range(3):
            fail_parsing(self.logger, i)
            fail_lookup(self.logger, i)
            # no traceback: the format string tells errors apart, not the values
            self.logger.error("Disk {path} is full", path=f"/var/{i}")
            self.logger.critical("Cannot reach {host}", host=f"db{i}")
        # not errors
        self.logger.warn("Slow query: {sql}", sql="SELECT 1")
        self.logger.info("Started")
        await self.tick()
        subjects = sorted(row[4] for row in self.reports())
        self.assertEqual(subjects, [
            "[emaild error] KeyError in digest/test_error_reports.py:fail_lookup (3 times)",
            "[emaild error] ValueError in digest/test_error_reports.py:fail_parsing (3 times)",
            "[emaild error] emaild.somepart: Cannot reach {host} (3 times)",
            "[emaild error] emaild.somepart: Disk {path} is full (3 times)",
        ])

    @async_test
    async def test_every_address_gets_the_report(self):
        self.addresses = ["ops@example.org", "dev@example.org"]
        self.make_reporter()
        fail_parsing(self.logger, 1)
        await self.tick()
        self.assertEqual(sorted(row[0] for row in self.reports()),
                         ["dev@example.org", "ops@example.org"])

    @async_test
    async def test_the_fingerprints_are_bounded(self):
        self.make_reporter(max_fingerprints=3)
        for i in range(50):
            self.logger.error(f"Problem number {i}")  # 50 different formats
        self.assertEqual(len(self.reporter.entries), 4)
        self.assertEqual(self.reporter.entries[OVERFLOW].count, 47)
        await self.tick()
        self.assertEqual(len(self.reports()), 4)

    def test_fingerprints_ignore_values(self):
        events = []
        logger = Logger(namespace="x", observer=events.append)
        for i in range(2):
            fail_parsing(logger, i)
            logger.error("Disk {path} full", path=i)
        self.assertEqual(fingerprint(events[0]), fingerprint(events[2]))
        self.assertEqual(fingerprint(events[1]), fingerprint(events[3]))
        self.assertNotEqual(fingerprint(events[0]), fingerprint(events[1]))


class SafetyTests(ReporterTestCase):
    @async_test
    async def test_a_failing_enqueue_neither_recurses_nor_loops(self):
        self.make_reporter()
        calls = []
        other = Logger(namespace="emaild.outbound.store", observer=self.publisher)

        async def broken(*args, **kwargs):
            calls.append(args)
            # something in the outbox logs an error while the report is queued
            other.error("Could not queue {n} messages", n=1)
            raise RuntimeError("the database is down")

        self.outbox.enqueue = broken
        fail_parsing(self.logger, 1)
        await self.tick()
        self.assertEqual(len(calls), 1)
        # the reporter's own failure is logged (not counted, not reported)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.reporter.entries), 1)
        (entry,) = self.reporter.entries.values()
        self.assertEqual(entry.count, 1)  # kept for the next try
        for _ in range(20):
            await self.tick()
        self.assertEqual(len(calls), 1)  # no loop: it waits
        await self.tick(300)
        self.assertEqual(len(calls), 2)  # one retry later
        self.flushLoggedErrors(RuntimeError)
        self.outbox.enqueue = Outbox.enqueue.__get__(self.outbox)
        await self.tick(300)
        ((_, _, _, _, subject, body, _),) = self.reports()
        self.assertIn("(1 time)", subject)

    @async_test
    async def test_the_observer_never_raises_and_the_loop_survives(self):
        self.make_reporter()

        async def boom():
            raise RuntimeError("flush bug")

        real = self.reporter.flush
        self.reporter.flush = boom
        await self.tick()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(self.reporter._loop.running)
        self.reporter.flush = real
        # an event that breaks fingerprinting is ignored, not raised
        class Weird:
            @property
            def type(self):
                raise RuntimeError("no type")

        self.publisher({"log_level": None, "log_failure": Weird()})
        fail_parsing(self.logger, 1)
        await self.tick()
        self.assertEqual(len(self.reports()), 1)

    @async_test
    async def test_on_the_global_publisher_while_running(self):
        self.make_reporter(publisher=globalLogPublisher)
        logger = Logger(namespace="emaild.somepart")
        fail_parsing(logger, 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(sum(e.count for e in self.reporter.entries.values()), 1)
        await self.reporter.stopService()  # queues what is due
        self.assertEqual(len(self.reports()), 1)
        fail_parsing(logger, 2)
        self.flushLoggedErrors(ValueError)
        self.assertEqual(sum(e.count for e in self.reporter.entries.values()), 0)

    @async_test
    async def test_no_addresses_no_reports(self):
        self.addresses = []
        self.make_reporter()
        fail_parsing(self.logger, 1)
        self.assertEqual(self.reporter.entries, {})
        self.assertIsNone(self.reporter._loop)
        self.assertEqual(await self.reporter.flush(), 0)


class DaemonTests(DatabaseTestCase):
    @async_test
    async def test_the_daemon_reports_its_errors_until_it_stops(self):
        from twisted.internet import reactor

        from emaild.service import Emaild
        from tests.support import wait_for

        service = Emaild(self.config(http={"endpoint": "tcp:0:interface=127.0.0.1"},
                                     admin={"addresses": ["ops@example.org"]}), reactor)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        await service.ready
        self.assertTrue(service.errors.running)
        self.assertIs(service.notifier, service.web.notifier)
        fail_parsing(Logger(namespace="emaild.somepart"), 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(await service.errors.flush(), 1)
        await wait_for(lambda: self.query(
            "SELECT state FROM outbox WHERE template = 'error_report'") == [("sent",)])
        await service.stopService()
        self.assertFalse(service.errors.running)
        fail_parsing(Logger(namespace="emaild.somepart"), 2)
        self.flushLoggedErrors(ValueError)
        self.assertEqual(sum(e.count for e in service.errors.entries.values()), 0)
