"""
Queueing against a real PostgreSQL: every column of every message arrives
exactly as rendered (the INSERT sends each column as one value), and
C{emaild send --recipients}' pipeline commits whole chunks in order, so an
interruption or a failed chunk leaves exactly the chunks before it queued.
"""

from __future__ import annotations

import io

from twisted.internet import defer

from emaild.cli import csv_input
from emaild.cli.output import Interrupted
from emaild.db.arrays import text_array
from emaild.outbound.compose import Rendered
from tests.support import DatabaseTestCase

AWKWARD = ['plain', 'with "quotes"', "back\\slash", "\\\"", "{braces}", "a,b", "NULL", "null",
           "", " spaced ", "ünïcødé ✓", "'single'", "tab\there", "{\"a\",\"b\"}", "\\N"]


class EnqueueStoreTests(DatabaseTestCase):
    def setUp(self):
        d = super().setUp()
        d.addCallback(lambda _: self._parts())
        return d

    def _parts(self):
        self.cfg = self.config()
        self.hs = self.homeserver(self.cfg)
        self.store = self.hs.get_outbox_store()
        self.outbox = self.hs.get_outbox()

    def test_array_literal_round_trips_any_text(self):
        values = [*AWKWARD, None]
        (row,) = self.query("SELECT %s::text[]", (text_array(values),))
        self.assertEqual(row[0], values)

    @defer.inlineCallbacks
    def test_every_column_of_every_message_is_stored_as_rendered(self):
        people = self.query("INSERT INTO people (email) SELECT 'p' || g || '@example.org'"
                            " FROM generate_series(1, 3) g RETURNING id")
        messages = [
            Rendered(f"r{i}@example.org", f"bounces+{i}@x.test", f"<{i}@x.test>", subject,
                     bytes(range(256))[i % 7:] * (i % 3 + 1) if i % 4 else b"x",
                     person_id=people[i % 3][0] if i % 2 else None,
                     course_id=None, kind=(None if i % 3 == 0 else subject[:20] or "k"),
                     unsubscribable=bool(i % 2))
            for i, subject in enumerate(AWKWARD)]
        ids = yield self.store.enqueue("t", self.cfg.qos_class(None), messages, batch="b\"1")
        rows = self.query("SELECT id, recipient, envelope_from, message_id, subject, body,"
                          " person_id, course_id, kind, unsubscribable, batch, template, qos,"
                          " state FROM outbox ORDER BY id")
        self.assertEqual([r[0] for r in rows], ids)
        self.assertEqual(len(ids), len(messages))
        for m, row in zip(messages, rows):
            row = (*row[:5], bytes(row[5]), *row[6:])
            self.assertEqual(row[1:10], (m.recipient, m.envelope_from, m.message_id, m.subject,
                                         m.data, m.person_id, m.course_id, m.kind,
                                         m.unsubscribable))
            self.assertEqual(row[10:], ('b"1', "t", "default", "queued"))
        self.assertEqual((yield self.store.enqueue("t", self.cfg.qos_class(None), [])), [])

    @defer.inlineCallbacks
    def test_ascii_bodies_travel_as_text_and_arrive_exactly(self):
        bodies = [b"plain\n", b"it's \\ a \"quote\" {x,y}\r\n", b"'", b"\\", b"\\x41", b"E'\\n'",
                  "".join(map(chr, range(1, 128))).encode("ascii")]
        messages = [Rendered(f"r{i}@example.org", f"bounces+t{i}@x.test", f"<t{i}@x.test>", "s", body)
                    for i, body in enumerate(bodies)]
        ids = yield self.store.enqueue("t", self.cfg.qos_class(None), messages)
        rows = self.query("SELECT id, body FROM outbox ORDER BY id")
        self.assertEqual([r[0] for r in rows], ids)
        self.assertEqual([bytes(r[1]) for r in rows], bodies)

    # -- emaild send --recipients ------------------------------------------------
    def write_csv(self, n: int, bad_line: int | None = None):
        path = self.tmp / "people.csv"
        lines = ["email,name"] + [
            f"{'not an address' if i + 2 == bad_line else f'p{i}@example.org'},P {i}"
            for i in range(n)]
        path.write_text("\n".join(lines) + "\n")
        return path

    async def send(self, path, **kwargs):
        f, reader = csv_input.open_csv(str(path))
        out = io.StringIO()
        with f:
            try:
                code = await csv_input.send_csv(self.outbox, reader, str(path), "welcome",
                                                None, None, out=out, **kwargs)
            finally:
                self.summary = out.getvalue()
        return code

    @defer.inlineCallbacks
    def test_every_row_queued_in_order_in_chunks(self):
        self.patch(csv_input, "CSV_CHUNK", 4)
        code = yield defer.ensureDeferred(self.send(self.write_csv(11, bad_line=6)))
        self.assertEqual(code, 1)
        rows = self.query("SELECT id, recipient, batch FROM outbox ORDER BY id")
        self.assertEqual([r[1] for r in rows], [f"p{i}@example.org" for i in range(11) if i != 4])
        self.assertEqual({r[2] for r in rows}, {"people.csv"})
        self.assertIn(f"queued 10 messages (ids {rows[0][0]}\u2013{rows[-1][0]}), rejected 1 row",
                      self.summary)
        self.assertIn("line 6: not an address:", self.summary)

    @defer.inlineCallbacks
    def test_interrupted_after_a_chunk_queues_exactly_the_chunks_before(self):
        self.patch(csv_input, "CSV_CHUNK", 3)
        checks = []

        def check_interrupt():
            checks.append(len(self.query("SELECT id FROM outbox")))
            if len(checks) == 3:  # two chunks committed, the third rendered
                raise Interrupted()

        with self.assertRaises(Interrupted):
            yield defer.ensureDeferred(self.send(self.write_csv(20),
                                                 check_interrupt=check_interrupt))
        # each check comes after the previous chunk committed, before the next is written
        self.assertEqual(checks, [0, 3, 6])
        rows = self.query("SELECT recipient FROM outbox ORDER BY id")
        self.assertEqual([r[0] for r in rows], [f"p{i}@example.org" for i in range(6)])
        self.assertIn("queued 6 messages", self.summary)

    @defer.inlineCallbacks
    def test_a_failed_chunk_stops_there_and_the_chunks_before_stay(self):
        self.patch(csv_input, "CSV_CHUNK", 3)
        tokens = iter([f"{i:020x}" for i in range(4)] + ["0" * 20] * 100)
        self.outbox.composer.new_token = lambda: next(tokens)  # the 2nd chunk repeats a bounce address
        with self.assertRaises(Exception) as raised:
            yield defer.ensureDeferred(self.send(self.write_csv(12)))
        self.assertIn("envelope_from", str(raised.exception))
        rows = self.query("SELECT recipient FROM outbox ORDER BY id")
        self.assertEqual([r[0] for r in rows], [f"p{i}@example.org" for i in range(3)])

