"""
Mail addressed to people (Outbox.enqueue_people) and the opt-out check when
a message is claimed, against a real PostgreSQL.
"""

from __future__ import annotations

import email
import email.policy
import re
import time

from twisted.internet import defer

from emaild.outbound.compose import ComposeError
from emaild.outbound.kinds import Scope
from emaild.outbound.store import RateLimits
from tests.support import DatabaseTestCase

NOW = 1_900_000_000.0
LIMITS = RateLimits(rate=1000.0, burst=1000.0, daily_quota=0, lease=60.0)


def parse(data):
    return email.message_from_bytes(bytes(data), policy=email.policy.default)


class PeopleTestCase(DatabaseTestCase):
    def setUp(self):
        d = super().setUp()
        d.addCallback(lambda _: self._parts())
        return d

    def _parts(self):
        self.cfg = self.config(http={"public_url": "https://course.example.org"},
                               smtp={"relay_domain": "mail.course.test"})
        hs = self.homeserver(self.cfg)
        self.store = hs.get_outbox_store()
        self.outbox = hs.get_outbox()
        self.people = hs.get_people_store()

    def course(self, title="Physics 101") -> int:
        return self.query("INSERT INTO courses (context_id, title) VALUES (%s, %s) RETURNING id",
                          (title.lower().replace(" ", "-"), title))[0][0]

    def body(self, outbox_id) -> email.message.EmailMessage:
        return parse(self.query("SELECT body FROM outbox WHERE id = %s", (outbox_id,))[0][0])

    def make_due(self):
        self.query("UPDATE outbox SET next_attempt_at = to_timestamp(%s)", (NOW - 1,))


class EnqueuePeopleTests(PeopleTestCase):
    @defer.inlineCallbacks
    def test_current_address_and_name_are_used(self):
        ann = yield self.people.add("ann@example.org", "Ann Old")
        course = self.course()
        self.query("UPDATE people SET email = 'ann.new@example.org', display_name = 'Ann New'"
                   " WHERE id = %s", (ann.id,))
        report = yield defer.ensureDeferred(self.outbox.enqueue_people(
            "announcement", [(ann.id, {"subject": "News", "body": "Hello"})],
            kind="announcement", course_id=course))
        self.assertEqual(report.rejected, [])
        (oid,) = report.ids
        row = self.query("SELECT recipient, person_id, course_id, kind, qos, unsubscribable"
                         " FROM outbox WHERE id = %s", (oid,))[0]
        self.assertEqual(row, ("ann.new@example.org", ann.id, course, "announcement", "default", True))
        message = self.body(oid)
        self.assertEqual(message["To"].addresses[0].addr_spec, "ann.new@example.org")
        self.assertEqual(message["To"].addresses[0].display_name, "Ann New")
        self.assertIn("course.example.org/unsubscribe/", message["List-Unsubscribe"])

    @defer.inlineCallbacks
    def test_people_without_an_address_are_rejected_and_the_rest_queued(self):
        ann = yield self.people.add("ann@example.org", "Ann")
        nobody = yield self.people.add(None, "No Address")
        report = yield defer.ensureDeferred(self.outbox.enqueue_people(
            "login", [(nobody.id, {}), (ann.id, {}), (999999, {}), ("7", {}),
                      (ann.id, {"target": "//evil.example/"})],
            kind="login"))
        self.assertEqual(len(report.ids), 1)
        reasons = {r.index: r.reason for r in report.rejected}
        self.assertEqual(sorted(reasons), [0, 2, 3, 4])
        self.assertIn(f"person {nobody.id} has no e-mail address", reasons[0])
        self.assertIn("no person 999999", reasons[2])
        self.assertIn("no person '7'", reasons[3])
        self.assertIn("not a path on this site", reasons[4])
        self.assertEqual(report.rejected[0].person_id, nobody.id)
        row = self.query("SELECT recipient, kind, qos, unsubscribable FROM outbox")[0]
        self.assertEqual(row, ("ann@example.org", "login", "transactional", False))
        self.assertNotIn("List-Unsubscribe", self.body(report.ids[0]))

    @defer.inlineCallbacks
    def test_links_are_minted_in_one_call_and_reused_across_enqueues(self):
        people = []
        for i in range(30):
            people.append((yield self.people.add(f"p{i}@example.org", f"P {i}")))
        course = self.course()
        calls = []
        ops = self.config(templates={"dir": str(self.tmp / "ops")},
                          http={"public_url": "https://course.example.org"},
                          smtp={"relay_domain": "mail.course.test"})
        (self.tmp / "ops" / "email").mkdir(parents=True)
        (self.tmp / "ops" / "email" / "group.subject.txt").write_text("Your group")
        (self.tmp / "ops" / "email" / "group.txt").write_text(
            "{{ link('/groups/3') }}\n{{ link('/home') }}\n{{ link('/groups/3') }}\n"
            "{{ unsubscribe_url }}\n")
        self.outbox = self.homeserver(ops).get_outbox()
        mint_many = self.outbox.links.mint_many

        def counting(requests):
            calls.append(len(requests))
            return mint_many(requests)

        self.outbox.links.mint_many = counting
        recipients = [(p.id, {}) for p in people]

        first = yield defer.ensureDeferred(self.outbox.enqueue_people(
            "group", recipients, kind="notification", course_id=course))
        self.assertEqual(calls, [30 * 3])  # two links and the unsubscribe link, one call
        links_after_first = self.query("SELECT count(*) FROM links")[0][0]
        self.assertEqual(links_after_first, 30 * 3)
        second = yield defer.ensureDeferred(self.outbox.enqueue_people(
            "group", recipients, kind="notification", course_id=course))
        self.assertEqual(len(calls), 2)
        self.assertEqual(self.query("SELECT count(*) FROM links")[0][0], links_after_first)
        for a, b in zip(first.ids, second.ids):
            text_a, text_b = self.body(a).get_content(), self.body(b).get_content()
            self.assertEqual(text_a, text_b)  # the same links, reused
            urls = re.findall(r"https://\S+", text_a)
            self.assertEqual(len(urls), 4)
            self.assertEqual(urls[0], urls[2])
            self.assertEqual(len(set(urls)), 3)
        # each person got their own links
        everyone = {self.body(i).get_content().split()[0] for i in first.ids}
        self.assertEqual(len(everyone), 30)
        # the unsubscribe link is the one in List-Unsubscribe, scoped to the mail
        message = self.body(first.ids[0])
        url = message.get_content().split()[3]
        token = url.rsplit("/", 1)[1]
        self.assertEqual(message["List-Unsubscribe"],
                         f"<{url}>, <mailto:unsubscribe+{token}@mail.course.test>")
        resolution = yield defer.ensureDeferred(self.outbox.links.resolve(token, "unsubscribe"))
        self.assertEqual(resolution.link.target, f"notification:{course}")
        self.assertEqual(resolution.link.person_id, people[0].id)

    @defer.inlineCallbacks
    def test_unknown_kind_qos_or_course_queue_nothing(self):
        ann = yield self.people.add("ann@example.org", "Ann")
        for kwargs, words in [({"kind": "gossip"}, "no kind of mail 'gossip'"),
                              ({"kind": "digest", "qos": "urgent"}, "no QoS class 'urgent'"),
                              ({"kind": "digest", "course_id": 424242}, "no course 424242")]:
            with self.assertRaises(ComposeError) as caught:
                yield defer.ensureDeferred(self.outbox.enqueue_people(
                    "announcement", [(ann.id, {"subject": "s", "body": "b"})], **kwargs))
            self.assertIn(words, str(caught.exception))
        self.assertEqual(self.query("SELECT count(*) FROM outbox")[0][0], 0)

    @defer.inlineCallbacks
    def test_kind_sets_the_default_qos(self):
        ann = yield self.people.add("ann@example.org", "Ann")
        yield defer.ensureDeferred(self.outbox.enqueue_people(
            "announcement", [(ann.id, {"subject": "s", "body": "b"})], kind="digest"))
        yield defer.ensureDeferred(self.outbox.enqueue_people(
            "announcement", [(ann.id, {"subject": "s", "body": "b"})], kind="digest", qos="default"))
        self.assertEqual([r[0] for r in self.query("SELECT qos FROM outbox ORDER BY id")],
                         ["bulk", "default"])

    @defer.inlineCallbacks
    def test_bare_address_enqueue_is_unchanged(self):
        report = yield defer.ensureDeferred(self.outbox.enqueue(
            "plain", [("a@example.org", {"subject": "s", "body": "b"})]))
        row = self.query("SELECT person_id, course_id, kind, unsubscribable FROM outbox")[0]
        self.assertEqual(row, (None, None, None, False))
        self.assertNotIn("List-Unsubscribe", self.body(report.ids[0]))


class OptOutClaimTests(PeopleTestCase):
    """
    The claim suppresses exactly the messages an opt-out covers.
    """

    @defer.inlineCallbacks
    def test_opt_out_scopes(self):
        ann = yield self.people.add("ann@example.org", "Ann")
        physics, maths = self.course("Physics"), self.course("Maths")
        sent = {}
        for kind, course in [("announcement", physics), ("announcement", maths),
                             ("digest", physics), ("digest", None), ("login", physics)]:
            template = "login" if kind == "login" else "announcement"
            report = yield defer.ensureDeferred(self.outbox.enqueue_people(
                template, [(ann.id, {"subject": "s", "body": "b"})], kind=kind, course_id=course))
            sent[(kind, course)] = report.ids[0]
        self.make_due()

        yield self.store.add_optout(ann.id, Scope(physics, "announcement"), "one-click")
        yield self.store.add_optout(ann.id, Scope(None, "digest"), "web")
        again = yield self.store.add_optout(ann.id, Scope(None, "digest"), "preferences")
        self.assertFalse(again)
        result = yield self.store.claim("me", NOW, 10, LIMITS, self.cfg.qos)
        self.assertEqual(result.suppressed, 3)
        self.assertEqual(sorted(m.id for m in result.messages),
                         sorted([sent[("announcement", maths)], sent[("login", physics)]]))
        day = time.strftime("%Y-%m-%d", time.gmtime())
        reasons = dict(self.query("SELECT id, reason FROM outbox WHERE state = 'suppressed'"))
        self.assertEqual(reasons, {
            sent[("announcement", physics)]:
                f"suppressed: person {ann.id} unsubscribed from announcement mail in course "
                f"{physics} (one-click, {day})",
            sent[("digest", physics)]:
                f"suppressed: person {ann.id} unsubscribed from digest mail in every course (web, {day})",
            sent[("digest", None)]:
                f"suppressed: person {ann.id} unsubscribed from digest mail in every course (web, {day})",
        })

    @defer.inlineCallbacks
    def test_all_mail_opt_out_spares_transactional_mail_and_other_people(self):
        ann = yield self.people.add("ann@example.org", "Ann")
        bob = yield self.people.add("bob@example.org", "Bob")
        course = self.course()
        news = yield defer.ensureDeferred(self.outbox.enqueue_people(
            "announcement", [(ann.id, {"subject": "s", "body": "b"}),
                             (bob.id, {"subject": "s", "body": "b"})],
            kind="announcement", course_id=course))
        login = yield defer.ensureDeferred(self.outbox.enqueue_people(
            "login", [(ann.id, {})], kind="login"))
        self.make_due()
        yield self.store.add_optout(ann.id, Scope(None, None), "web")
        result = yield self.store.claim("me", NOW, 10, LIMITS, self.cfg.qos)
        self.assertEqual(sorted(m.id for m in result.messages), sorted([news.ids[1], login.ids[0]]))
        self.assertEqual(self.query("SELECT id FROM outbox WHERE state = 'suppressed'"),
                         [(news.ids[0],)])

    @defer.inlineCallbacks
    def test_resubscribing_and_preferences(self):
        ann = yield self.people.add("ann@example.org", "Ann")
        course = self.course()
        yield self.store.add_optout(ann.id, Scope(course, None), "web")
        yield self.store.add_optout(ann.id, Scope(None, "digest"), "web")
        removed = yield self.store.remove_optout(ann.id, Scope(course, None))
        self.assertTrue(removed)
        managed = {Scope(None, None), Scope(None, "digest"), Scope(course, "announcement")}
        added, dropped = yield self.store.set_optouts(
            ann.id, managed, {Scope(None, None), Scope(course, "announcement")}, "preferences")
        self.assertEqual((added, dropped), (2, 1))
        optouts = yield self.store.optouts(ann.id)
        self.assertEqual({(o.scope, o.source) for o in optouts},
                         {(Scope(None, None), "preferences"),
                          (Scope(course, "announcement"), "preferences")})
