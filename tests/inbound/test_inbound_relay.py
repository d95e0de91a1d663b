"""
The relay processor against a real PostgreSQL: fan-out through the outbox,
threading, anonymity, exactly-once after a crash, auto-replies and
duplicates ignored, bounces counted and suppressed, unsubscribe by mail.
(Mail arrives here through InboundStore.receive, as the SMTP server stores
it; tests/inbound/test_inbound_end_to_end.py goes through the real server.)
"""

from __future__ import annotations

import email
import email.policy
from email.utils import formatdate

import psycopg2
from twisted.internet import defer, reactor

from emaild.db.database import DatabaseUnavailable
from emaild.groups.addresses import reply_addresses
from emaild.groups.store import GroupStore
from emaild.inbound.handler import InboundHandler
from emaild.inbound.relay import RelayProcessor
from emaild.inbound.store import InboundStore, process_rows
from emaild.inbound.webpost import post_from_web
from emaild.outbound.store import OutboxStore
from emaild.people.store import PeopleStore
from tests.support import DatabaseTestCase, wait_for

DOMAIN = "relay.course.test"
REAL = ("ada@example.org", "bob@example.net", "carol@example.com")


def mail(sender: str, to: str, subject: str, body: str, **headers) -> bytes:
    lines = [f"From: {sender}", f"To: {to}", f"Subject: {subject}",
             f"Date: {formatdate(usegmt=True)}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode()


def parse(data) -> email.message.EmailMessage:
    return email.message_from_bytes(bytes(data), policy=email.policy.default)


class RelayTestCase(DatabaseTestCase):
    async def _setup(self):
        self.cfg = self.config(http={"public_url": "https://course.example.org"},
                               smtp={"relay_domain": DOMAIN},
                               relay={"poll_interval": "0.2s"},
                               groups={"hard_bounce_limit": 2})
        self.people = PeopleStore(self.db)
        self.groups = GroupStore(self.db)
        self.inbound = InboundStore(self.db)
        self.outbox_store = OutboxStore(self.db)
        self.outbox = self.homeserver(self.cfg).get_outbox()
        self.addresses = reply_addresses(self.cfg)
        self.handler = InboundHandler(self.inbound, self.groups, self.addresses,
                                      self.outbox.links, self.outbox_store)
        course = await self.people.ensure_course("", "phys", "Physics 101")
        self.group_id = await self.people.ensure_group(course, "Team A")
        self.ids = {}
        for address, name in zip(REAL, ("Ada Lovelace", "Bob Babbage", "Carol Shaw")):
            person = await self.people.add(address, name)
            await self.people.join_group(self.group_id, person.id)
            self.ids[name.split()[0].lower()] = person.id
        self.reply = {}
        for member in await self.groups.members(self.group_id):
            self.reply[member.display_name.split()[0].lower()] = self.addresses.address(member.token)

    def setUp(self):
        d = super().setUp()
        d.addCallback(lambda _: defer.ensureDeferred(self._setup()))
        return d

    def bare_processor(self):
        """A processor that is not running (the test drives it)."""
        return RelayProcessor(reactor, self.cfg, self.inbound, self.addresses,
                              self.outbox.links, self.outbox)

    def processor(self):
        processor = RelayProcessor(reactor, self.cfg, self.inbound, self.addresses,
                                   self.outbox.links, self.outbox)
        processor.startService()
        self.addCleanup(processor.stopService)
        return processor

    async def receive(self, who: str, raw: bytes, mail_from: str | None = None) -> int:
        """
        Store mail from C{who} to their reply address as the server would.
        """
        mail_from = REAL[list(self.reply).index(who)] if mail_from is None else mail_from
        recipient = await self.handler.check_recipient(self.reply[who], mail_from)
        return await self.inbound.receive(peer="127.0.0.1", helo="test", tls=False,
                                          mail_from=mail_from, recipients=[recipient], raw=raw)

    def states(self, message_id):
        return self.query("SELECT state, reason FROM inbound_recipients WHERE message_id = %s",
                          (message_id,))

    async def processed(self, message_id):
        await wait_for(lambda: all(s != "received" for s, _ in self.states(message_id)),
                       timeout=15)
        return self.states(message_id)

    def copies(self, message_id):
        return self.query(
            "SELECT o.recipient, o.body FROM outbox o JOIN group_posts p"
            "  ON o.batch = 'group ' || p.group_id || ' post ' || p.id"
            " JOIN inbound_recipients r ON r.id = p.inbound_id"
            " WHERE r.message_id = %s ORDER BY o.recipient", (message_id,))


class FanOutTests(RelayTestCase):
    async def test_copies_thread_and_reveal_no_address(self):
        self.processor()
        first = await self.receive("ada", mail(
            "Ada Lovelace <ada@example.org>", self.reply["ada"], "Meeting on Friday?",
            "Shall we meet? Write to me at ada@example.org or ask Bob (bob@example.net).\n"
            "-- \nAda <mailto:ada@example.org>\n", Message_ID="<a1@mail.example.org>"))
        (state,) = await self.processed(first)
        self.assertEqual(state[0], "done", state)
        copies = self.copies(first)
        self.assertEqual([c[0] for c in copies], ["bob@example.net", "carol@example.com"])
        for recipient, body in copies:
            raw = bytes(body)
            for address in REAL:
                self.assertNotIn(address.encode(), raw.lower())
            message = parse(raw)
            own = self.reply["bob" if recipient.startswith("bob") else "carol"]
            self.assertEqual(message["From"].addresses[0].addr_spec, own)
            self.assertIn("Ada Lovelace", message["From"].addresses[0].display_name)
            self.assertIn("Team A", str(message["From"]))
            self.assertEqual(message["Reply-To"].addresses[0].addr_spec, own)
            self.assertEqual(message["Subject"], "Meeting on Friday?")
            self.assertIn("List-Unsubscribe", message)
            self.assertIn("Ada Lovelace", message.get_body(("plain",)).get_content())
        post_id = parse(copies[0][1])["Message-ID"]
        self.assertTrue(post_id.endswith(f"@{DOMAIN}>"))
        self.assertEqual(parse(copies[1][1])["Message-ID"], post_id)

        # Bob replies to the copy he got; Ada cites her own original id too
        reply = await self.receive("bob", mail(
            "bob@example.net", self.reply["bob"], "Re: Meeting on Friday?",
            "Yes!\n\nOn Fri, Ada Lovelace via Team A wrote:\n> Shall we meet?\n",
            In_Reply_To=post_id, References=f"<unknown@elsewhere.example> {post_id}"))
        (state,) = await self.processed(reply)
        self.assertEqual(state[0], "done", state)
        copies = self.copies(reply)
        self.assertEqual([c[0] for c in copies], ["ada@example.org", "carol@example.com"])
        for _, body in copies:
            message = parse(body)
            self.assertEqual(message["In-Reply-To"], post_id)
            self.assertEqual(message["References"], post_id)  # the unknown id is dropped
        (thread,) = await self.groups.threads(self.group_id)
        self.assertEqual((thread.subject, thread.posts, thread.started_by),
                         ("Meeting on Friday?", 2, "Ada Lovelace"))

        # Ada answers citing her own original Message-ID: mapped to ours
        again = await self.receive("ada", mail(
            "ada@example.org", self.reply["ada"], "Re: Meeting on Friday?", "Great.\n",
            In_Reply_To="<a1@mail.example.org>"))
        await self.processed(again)
        for _, body in self.copies(again):
            self.assertEqual(parse(body)["In-Reply-To"], post_id)

    async def test_web_post_goes_out_like_mail(self):
        self.processor()
        message_id = await post_from_web(self.inbound, self.groups, self.addresses,
                                         self.group_id, self.ids["carol"], "Hello",
                                         "Hi all, I am carol@example.com")
        (state,) = await self.processed(message_id)
        self.assertEqual(state[0], "done", state)
        copies = self.copies(message_id)
        self.assertEqual([c[0] for c in copies], ["ada@example.org", "bob@example.net"])
        for _, body in copies:
            self.assertNotIn(b"carol@example.com", bytes(body))

    async def test_auto_replies_loops_and_duplicates_are_ignored(self):
        self.processor()
        ids = [
            await self.receive("ada", mail("ada@example.org", self.reply["ada"], "Out of Office",
                                           "I am away.", Auto_Submitted="auto-replied")),
            await self.receive("ada", mail("ada@example.org", self.reply["ada"], "Digest",
                                           "news", Precedence="bulk")),
            await self.receive("ada", mail("ada@example.org", self.reply["ada"], "x", "loop",
                                           X_Emaild_Loop=DOMAIN)),
            await self.receive("ada", mail("ada@example.org", self.reply["ada"], "null", "x"),
                               mail_from=""),
        ]
        for message_id in ids:
            ((state, reason),) = await self.processed(message_id)
            self.assertEqual(state, "ignored")
            self.assertTrue(reason.startswith("not relayed: "), reason)
        raw = mail("ada@example.org", self.reply["ada"], "Once", "x", Message_ID="<dup@x.org>")
        first, second = await self.receive("ada", raw), await self.receive("ada", raw)
        self.assertEqual((await self.processed(first))[0][0], "done")
        ((state, reason),) = await self.processed(second)
        self.assertEqual(state, "ignored")
        self.assertIn("delivered twice", reason)
        self.assertEqual(self.query("SELECT count(*) FROM outbox")[0][0], 2)


class DisplayNameTests(RelayTestCase):
    """
    A member whose name is (or holds) an address, as an LMS without names
    sends it: every copy's From and Reply-To show a neutral name instead.
    """

    async def test_a_name_that_is_an_address_is_not_shown(self):
        self.processor()
        for name in ("ada@example.org", "Ada Lovelace (ada&#64;example.org)", "ada [at] example.org"):
            self.query("UPDATE people SET display_name = %s WHERE id = %s", (name, self.ids["ada"]))
            message_id = await self.receive("ada", mail(
                f'"{name}" <ada@example.org>', self.reply["ada"], f"Hi {name}",
                "From ada@example.org, signed ada@example.org\n"))
            ((state, reason),) = await self.processed(message_id)
            self.assertEqual(state, "done", reason)
            copies = self.copies(message_id)
            self.assertEqual(len(copies), 2)
            for _, body in copies:
                self.assertNotIn(b"ada@example.org", bytes(body).lower())
                message = parse(body)
                for header in ("From", "Reply-To"):
                    (shown,) = message[header].addresses
                    self.assertEqual(shown.display_name, "A group member via Team A",
                                     (name, header))
                self.assertNotIn("example.org", str(message["Subject"]).lower())


class CrashTests(RelayTestCase):
    async def batch(self, handle):
        """One batch through process_rows, its rows' work done by C{handle}, row by row."""
        async def work(cursor, rows):
            return [(pending, await handle(cursor, pending)) for pending in rows]

        results, _ = await process_rows(self.inbound, work, limit=64, max_attempts=3)
        return results

    async def test_a_crash_before_commit_loses_nothing_and_sends_once(self):
        ids = [await self.receive("ada", mail("ada@example.org", self.reply["ada"],
                                              f"Crash {i}", "body")) for i in range(3)]
        crashing = self.bare_processor()
        handled = []

        async def relay_then_die(cursor, pending):
            handled.append(pending.message_id)
            if pending.message_id == ids[1]:
                # the first row's copies are queued in this transaction…
                raise psycopg2.OperationalError("server closed the connection")  # …which dies
            return await crashing._handle(cursor, pending)

        with self.assertRaises(DatabaseUnavailable):
            await self.batch(relay_then_die)
        # lost before COMMIT, so the database layer ran it once more, to no avail
        self.assertEqual(handled, ids[:2] * 2)
        self.assertEqual(self.query("SELECT count(*) FROM outbox")[0][0], 0)
        self.assertEqual(self.query("SELECT count(*) FROM group_relayed_copies")[0][0], 0)
        for message_id in ids:
            self.assertEqual(self.states(message_id), [("received", None)])

        self.processor()
        for message_id in ids:
            ((state, _),) = await self.processed(message_id)
            self.assertEqual(state, "done")
        self.assertEqual(self.query("SELECT count(*) FROM outbox")[0][0], 6)
        self.assertEqual(self.query("SELECT count(*) FROM group_posts")[0][0], 3)

    async def test_a_message_that_always_crashes_ends_failed(self):
        message_id = await self.receive("ada", mail("ada@example.org", self.reply["ada"],
                                                    "Poison", "body"))
        processor = self.processor()

        async def always(cursor, pending):
            raise ValueError("cannot handle this")

        processor._relay = always
        ((state, reason),) = await self.processed(message_id)
        self.assertEqual(state, "failed")
        self.assertIn("cannot handle this", reason)
        # each attempt logged (once its batch committed)
        errors = []
        await wait_for(lambda: errors.extend(self.flushLoggedErrors(ValueError))
                       or len(errors) >= 3)
        self.assertEqual(len(errors), 3)

    async def test_a_failing_row_does_not_poison_its_batch(self):
        ids = [await self.receive("ada", mail("ada@example.org", self.reply["ada"],
                                              f"Post {i}", "body")) for i in range(5)]
        processor = self.bare_processor()

        async def fail_the_middle_one(cursor, pending):
            outcome = await processor._handle(cursor, pending)  # its work is undone…
            if pending.message_id == ids[2]:
                raise ValueError("cannot handle this")
            return outcome

        results = await self.batch(fail_the_middle_one)
        self.assertEqual([p.message_id for p, _ in results], ids)  # all five, in one call
        self.assertEqual([o.state for _, o in results],
                         ["done", "done", "retry", "done", "done"])
        self.assertEqual([s for i in ids for s, _ in self.states(i)],
                         ["done", "done", "received", "done", "done"])
        self.assertEqual(self.query("SELECT count(*) FROM outbox")[0][0], 8)
        self.assertEqual(self.query("SELECT count(*) FROM group_posts")[0][0], 4)
        self.assertEqual(self.query("SELECT attempts FROM inbound_recipients r"
                                    " WHERE message_id = %s", (ids[2],)), [(1,)])

    async def test_a_batch_stops_taking_rows_at_its_copy_budget(self):
        ids = [await self.receive("ada", mail("ada@example.org", self.reply["ada"],
                                              f"Post {i}", "body")) for i in range(4)]
        processor = self.bare_processor()
        processor.max_copies = 3
        results, _ = await process_rows(self.inbound, processor._work, limit=64, max_attempts=3)
        self.assertEqual([p.message_id for p, _ in results], ids[:2])  # 2 copies each
        self.assertEqual([s for i in ids for s, _ in self.states(i)],
                         ["done", "done", "received", "received"])


class AtMostOnceTests(RelayTestCase):
    """
    Each (message, member) is relayed at most once, whatever the headers say
    (here: no Message-ID) and however often the message is addressed or
    processed.
    """

    async def _receive_repeated(self, times: int) -> int:
        raw = mail("ada@example.org", self.reply["ada"], "No id", "body")
        recipient = await self.handler.check_recipient(self.reply["ada"], REAL[0])
        return await self.inbound.receive(peer="127.0.0.1", helo="test", tls=False,
                                          mail_from=REAL[0], recipients=[recipient] * times,
                                          raw=raw)

    def copies_per_member(self):
        return self.query("SELECT recipient, count(*) FROM outbox GROUP BY 1 ORDER BY 1")

    async def test_repeated_rcpts_relay_once(self):
        message_id = await self._receive_repeated(20)
        self.processor()
        states = await self.processed(message_id)
        self.assertEqual(sorted(s for s, _ in states), ["done"] + ["ignored"] * 19)
        self.assertIn("more than once", [r for s, r in states if s == "ignored"][0])
        self.assertEqual(self.copies_per_member(),
                         [("bob@example.net", 1), ("carol@example.com", 1)])

    async def test_reprocessing_sends_no_second_copy(self):
        message_id = await self._receive_repeated(1)
        processor = self.bare_processor()
        await process_rows(self.inbound, processor._work, limit=64, max_attempts=3)
        # as if the row were taken again (an operator reset, a second process)
        # with its post gone: only the copies table stands in the way
        self.query("DELETE FROM group_posts")
        self.query("UPDATE inbound_recipients SET state = 'received' WHERE message_id = %s",
                   (message_id,))
        results, _ = await process_rows(self.inbound, processor._work, limit=64, max_attempts=3)
        self.assertEqual([o.state for _, o in results], ["ignored"])
        self.assertIn("already had a copy", results[0][1].reason)
        self.assertEqual(self.copies_per_member(),
                         [("bob@example.net", 1), ("carol@example.com", 1)])
        self.assertEqual(self.query("SELECT count(*) FROM group_posts")[0][0], 0)

    def test_the_database_refuses_a_second_copy(self):
        self.query("INSERT INTO inbound_messages (mail_from, size, raw) VALUES ('', 0, '')")
        ((message_id,),) = self.query("SELECT max(id) FROM inbound_messages")
        insert = ("INSERT INTO group_relayed_copies (message_id, group_id, person_id)"
                  " VALUES (%s, %s, %s)")
        self.query(insert, (message_id, self.group_id, self.ids["bob"]))
        with self.assertRaises(psycopg2.IntegrityError):
            self.query(insert, (message_id, self.group_id, self.ids["bob"]))


DSN = """From: MAILER-DAEMON@mx.example.net\r
To: {to}\r
Subject: Undelivered Mail Returned to Sender\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r
\r
--b1\r
Content-Type: text/plain\r
\r
Your message could not be delivered.\r
--b1\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; mx.example.net\r
\r
Final-Recipient: rfc822; {rcpt}\r
Action: failed\r
Status: {status}\r
Diagnostic-Code: smtp; 550 5.1.1 user unknown\r
--b1--\r
"""


class BounceAndUnsubscribeTests(RelayTestCase):
    async def test_hard_bounces_suppress_the_address(self):
        self.processor()
        report = await self.outbox.enqueue("plain", [("gone@example.org", {"subject": "s", "body": "b"})] * 3)
        rows = self.query("SELECT id, envelope_from FROM outbox ORDER BY id")
        results = []
        for (_outbox_id, bounce_address), status in zip(rows, ("4.2.2", "5.1.1", "5.1.1")):
            recipient = await self.handler.check_recipient(bounce_address, "")
            results.append(await self.inbound.receive(
                peer="x", helo="x", tls=False, mail_from="", recipients=[recipient],
                raw=DSN.format(to=bounce_address, rcpt="gone@example.org", status=status).encode()))
            await self.processed(results[-1])
        self.assertEqual(len(report.ids), 3)
        reasons = [self.states(i)[0] for i in results]
        self.assertEqual([s for s, _ in reasons], ["done"] * 3)
        self.assertIn("soft bounce", reasons[0][1])
        self.assertIn("suppressed after 2 hard bounces", reasons[2][1])
        (suppression,) = self.query("SELECT address, reason FROM suppressions")
        self.assertEqual(suppression[0], "gone@example.org")
        self.assertIn("5.1.1", suppression[1])
        self.assertEqual(self.query("SELECT count(*) FROM outbox_attempts WHERE outcome = 'bounced'"),
                         [(3,)])

    async def test_a_bounce_address_only_takes_bounces(self):
        self.processor()
        await self.outbox.enqueue("plain", [("x@example.org", {"subject": "s", "body": "b"})])
        ((bounce_address,),) = self.query("SELECT envelope_from FROM outbox")
        recipient = await self.handler.check_recipient(bounce_address, "someone@example.org")
        message_id = await self.inbound.receive(
            peer="x", helo="x", tls=False, mail_from="someone@example.org",
            recipients=[recipient], raw=mail("someone@example.org", bounce_address, "hi", "x"))
        ((state, reason),) = await self.processed(message_id)
        self.assertEqual(state, "ignored")
        self.assertIn("null sender", reason)

    async def test_mail_to_the_unsubscribe_address_unsubscribes(self):
        self.processor()
        first = await self.receive("ada", mail("ada@example.org", self.reply["ada"], "s", "b"))
        await self.processed(first)
        bob_copy = parse(self.copies(first)[0][1])
        mailto = [part.strip(" <>") for part in str(bob_copy["List-Unsubscribe"]).split(",")
                  if "mailto:" in part][0][len("mailto:"):]
        recipient = await self.handler.check_recipient(mailto, "bob@example.net")
        message_id = await self.inbound.receive(
            peer="x", helo="x", tls=False, mail_from="bob@example.net", recipients=[recipient],
            raw=mail("bob@example.net", mailto, "unsubscribe", ""))
        ((state, reason),) = await self.processed(message_id)
        self.assertEqual(state, "done", reason)
        self.assertEqual(self.query("SELECT person_id, kind, source FROM mail_optouts"),
                         [(self.ids["bob"], "group", "mailto")])
