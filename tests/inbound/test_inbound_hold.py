"""
Posts held until their member confirms them ([groups] unauthenticated =
"hold"), through the real daemon: the post gets 250 but is not relayed; the
member gets "Did you send this?" at their own address (the maildir
outbox); the link's page shows the post and changes nothing; "send it"
relays it, "it was not me" discards it; unknown and expired links say so.
"""

from __future__ import annotations

from twisted.internet import reactor, task
from twisted.trial import unittest

from emaild.cli.inbound import auth_summary
from emaild.inbound.holds import subject_of
from emaild.inbound.holds_store import EXPIRED_REASON
from tests.authfixture import HELD_REASON, DaemonWithDNS, post, wait_for


class HoldTests(DaemonWithDNS):
    async def test_held_then_sent(self):
        await self.start()
        message_id = await self.held_post(subject="Meeting on Friday?")
        self.assertIn("dmarc=fail", self.authentication(message_id))
        # asked at the address the group knows, never told to anyone else
        link = await self.question("carol@none.test")
        self.assertIn("Hello Carol Shaw,", self.mailbox("carol@none.test")[0].get_body(
            ("plain",)).get_content())
        self.assertEqual(self.query(
            "SELECT recipient, template, kind FROM outbox WHERE template = 'hold_confirm'"),
            [("carol@none.test", "hold_confirm", "transactional")])
        browser = self.browser()
        for _ in range(2):  # looking (a mail scanner, a preview) changes nothing
            response, page = await browser.get(link)
            self.assertEqual(response.code, 200)
            self.assertIn("Meeting on Friday?", page)
            self.assertIn("Study Group", page)
            self.assertIn("mx.sender.test [127.0.0.1]", page)
            self.assertIn('value="send"', page)
            self.assertIn('value="discard"', page)
            self.assertEqual(response.headers.getRawHeaders("Referrer-Policy"), ["no-referrer"])
        await task.deferLater(reactor, 1, lambda: None)
        self.assertEqual(self.states(message_id), [("held", HELD_REASON)])
        self.assertEqual(self.copies(message_id), [])

        response, page = await browser.post(link, data={"choice": "send"})
        self.assertEqual(response.code, 200)
        self.assertIn("on its way to Study Group", page)
        self.assertEqual(await self.relayed(message_id),
                         ["ada@spf.test", "bob@dkim.test", "dan@reject.test"])
        self.assertEqual(self.query("SELECT state FROM inbound_holds"), [("sent",)])
        # a second answer changes nothing
        response, page = await browser.post(link, data={"choice": "discard"})
        self.assertIn("already sent", page)
        await task.deferLater(reactor, 1, lambda: None)
        self.assertEqual(len(self.copies(message_id)), 3)
        self.assertEqual(self.states(message_id)[0][0], "done")

    async def test_not_me_discards_and_records_it(self):
        await self.start()
        message_id = await self.held_post()
        link = await self.question("carol@none.test")
        response, page = await self.browser().post(link, data={"choice": "discard"})
        self.assertEqual(response.code, 200)
        self.assertIn("not sent", page)
        self.assertEqual(self.states(message_id),
                         [("ignored", "discarded: the member said they did not send it")])
        await task.deferLater(reactor, 1.5, lambda: None)  # three processor polls
        self.assertEqual(self.copies(message_id), [])
        self.assertEqual(self.query("SELECT state FROM inbound_holds"), [("discarded",)])
        rows = await self.service.hs.get_inbound_store().recent(("ignored",))
        self.assertEqual(auth_summary(rows[0].authentication), "spf=softfail spf=none dkim=none dmarc=fail")

    async def test_bad_choice_unknown_and_expired_links(self):
        await self.start()
        message_id = await self.held_post()
        link = await self.question("carol@none.test")
        browser = self.browser()
        response, page = await browser.post(link, data={"choice": "maybe"})
        self.assertEqual(response.code, 400)
        token = link.rsplit("/", 1)[1]
        for bad in (token[:-1], token + "x", token[::-1], "0"):
            response, page = await browser.get(f"/hold/{bad}")
            self.assertEqual(response.code, 404, bad)
            response, page = await browser.post(f"/hold/{bad}", data={"choice": "send"})
            self.assertEqual(response.code, 404, bad)
        self.query("UPDATE links SET expires_at = now() - interval '1 second'"
                   " WHERE purpose = 'hold'")
        response, page = await browser.get(link)
        self.assertEqual(response.code, 410)
        self.assertIn("was not sent to the group", page)
        response, page = await browser.post(link, data={"choice": "send"})
        self.assertEqual(response.code, 410)
        self.assertEqual(self.states(message_id), [("held", HELD_REASON)])
        self.assertEqual(self.copies(message_id), [])
        # and the daemon's housekeeping gives up on it, saying why
        self.query("UPDATE inbound_holds SET expires_at = now() - interval '1 second'")
        await self.service.hs.get_hold_expiry().expire()
        self.assertEqual(self.states(message_id), [("ignored", EXPIRED_REASON)])
        self.assertEqual(self.query("SELECT state FROM inbound_holds"), [("expired",)])
        response, page = await browser.get(link)
        self.assertEqual(response.code, 410)
        await task.deferLater(reactor, 1, lambda: None)
        self.assertEqual(self.copies(message_id), [])

    async def test_the_question_goes_to_the_members_own_address_only(self):
        await self.start()
        # a forger writes as Carol from elsewhere: only Carol is asked
        await self.held_post(sender="Carol <carol@none.test>", subject="Send money")
        await self.question("carol@none.test")
        recipients = [r for (r,) in self.query("SELECT recipient FROM outbox")]
        self.assertEqual(recipients, ["carol@none.test"])

    async def test_an_unauthenticated_auto_reply_is_ignored_not_asked_about(self):
        await self.start()
        data = post("Carol <carol@none.test>", self.reply["carol"], subject="Out of office")
        data = data.replace(b"Subject:", b"Auto-Submitted: auto-replied\r\nSubject:")
        code, text = await self.send("carol", data)
        self.assertEqual(code, 250, text)
        message_id = text.decode().rsplit(" ", 1)[1]
        await wait_for(lambda: self.states(message_id)[0][0] != "received", timeout=15)
        self.assertEqual(self.states(message_id),
                         [("ignored", "not relayed: automatic mail (Auto-Submitted: auto-replied)")])
        self.assertEqual(self.query("SELECT count(*) FROM outbox"), [(0,)])
        self.assertEqual(self.query("SELECT count(*) FROM inbound_holds"), [(0,)])


class HoldTextTests(unittest.TestCase):
    def test_the_subject_shown_has_no_control_characters(self):
        self.assertEqual(subject_of(b"Subject: a\x00b\x1b[31m =?utf-8?q?caf=C3=A9?=\r\n\r\nx"),
                         "a b [31m caf\u00e9")
        self.assertEqual(subject_of(b"\r\n"), "")

    def test_hold_tokens_never_reach_the_access_log(self):
        from twisted.web.test.requesthelper import DummyRequest

        from emaild.web.app import access_log_line

        request = DummyRequest([b"hold", b"Ab3dE9xYz0Qw"])
        request.uri = b"/hold/Ab3dE9xYz0Qw"
        request.code, request.sentLength = 200, 0
        line = access_log_line("[01/Dec/2026:00:00:00 +0000]", request)
        self.assertIn("/hold/<token>", line)
        self.assertNotIn("Ab3dE9xYz0Qw", line)
