"""
LTI 1.3 launches that carry the LTI 1.1 migration claim, and the
postMessage storage path (for browsers that block our cookies in the iframe).
"""

from __future__ import annotations

import html
import re
import time
import urllib.parse

from emaild.people.lti13_claims import migration_sign as tool_sign
from tests import oauth1
from tests.lti.test_lti import launch_fields
from tests.lti.test_lti13 import FORM, Lti13TestCase, async_test
from tests.lti13_platform import CLIENT_ID, DEPLOYMENT_ID, ISSUER, migration_sign

KEY, SECRET = "moodle", "moodle-shared-secret-1"


class MigrationSignTests(Lti13TestCase):
    def test_the_migration_guide_example(self):
        # the worked example of the 1EdTech LTI 1.3 Migration Guide
        args = ("179248902", "689302", "https://lmsvendor.com", "PM48OJSfGDTAzAo", 1551290856,
                "172we8671fd8z", "my-lti11-secret")
        self.assertEqual(migration_sign(*args), "lWd54kFo5qU7xshAna6v8BwoBm6tmUjc6GTax6+12ps=")
        self.assertEqual(tool_sign(*args), migration_sign(*args))


class HeldLaunchTests(Lti13TestCase):
    def test_a_held_launch_survives_its_json_round_trip(self):
        import json

        from emaild.people.lti13_claims import Launch13

        launch = Launch13(platform="p", issuer="i", sub="s", email=None, rejected_email="x",
                          display_name="N", roles=("r1", "r2"), context_id="c",
                          context_title="T", group=None, resource_link_id="rl",
                          deployment_id="d", lti11_identity=("k", "u"), memberships_url=None)
        self.assertEqual(Launch13.from_json(json.loads(json.dumps(launch.to_json()))), launch)


class MigrationTests(Lti13TestCase):
    async def launch11(self):
        params = oauth1.sign("POST", self.base + "/lti/launch", launch_fields(), KEY, SECRET)
        response, body = await self.client().post("/lti/launch", data=oauth1.form_body(params),
                                                  headers=FORM)
        self.assertEqual(response.code, 303, body)
        ((person_id,),) = self.query("SELECT person_id FROM lti_identities")
        return person_id

    async def launch13(self, sign=None, user_id="u-1001", key=KEY):
        browser = self.client()
        redirect = await self.login(browser)
        exp = int(time.time()) + 300
        nonce = redirect["nonce"]
        self.platform.lti1p1 = {
            "user_id": user_id, "oauth_consumer_key": key,
            "oauth_consumer_key_sign": sign or migration_sign(
                key, DEPLOYMENT_ID, ISSUER, CLIENT_ID, exp, nonce, SECRET)}
        token = self.platform.id_token(nonce, exp=exp)
        response, body = await self.post_launch(browser, token, redirect["state"])
        self.assert_launched(response, body)

    @async_test
    async def test_a_checked_claim_links_the_1_3_identity_to_the_1_1_person(self):
        await self.start(lti={"consumers": {KEY: SECRET}},
                         platform_changes={"lti11_consumer_key": KEY})
        person_id = await self.launch11()
        # the 1.3 launch names another address: the identity, not the address, links
        await self.launch13()
        self.assertEqual([p[0] for p in self.people()], [person_id])
        self.assertEqual(self.query("SELECT issuer, sub, person_id FROM lti13_identities"),
                         [(ISSUER, "lti13-user-7", person_id)])
        # the course is the 1.1 course (lti11_consumer_key), with one membership
        self.assertEqual(self.query("SELECT c.consumer_key, c.context_id, m.person_id"
                                    " FROM course_members m JOIN courses c ON c.id = m.course_id"
                                    " ORDER BY c.id"),
                         [(KEY, "course-v1:Logic+2026", person_id), (KEY, "ctx-physics", person_id)])
        self.assertIn("(linked from LTI 1.1)", self.logged())

    @async_test
    async def test_a_claim_that_does_not_check_is_ignored_and_logged(self):
        await self.start(lti={"consumers": {KEY: SECRET}})
        person_id = await self.launch11()
        await self.launch13(sign="lWd54kFo5qU7xshAna6v8BwoBm6tmUjc6GTax6+12ps=")
        people = [p[0] for p in self.people()]
        self.assertEqual(len(people), 2)
        self.assertNotEqual(self.query("SELECT person_id FROM lti13_identities"), [(person_id,)])
        self.assertIn("does not check with consumer 'moodle'", self.logged())

    @async_test
    async def test_a_claim_for_an_unknown_consumer_is_ignored(self):
        await self.start(lti={"consumers": {KEY: SECRET}})
        await self.launch11()
        await self.launch13(key="someone-else")
        self.assertEqual(len(self.people()), 2)
        self.assertIn("consumer key 'someone-else' is not configured", self.logged())


def _data(page: str) -> dict:
    return {k: html.unescape(v) for k, v in re.findall(r'data-([a-z]+)="([^"]*)"', page)}


class StorageTests(Lti13TestCase):
    async def storage_login(self, browser):
        response, page = await browser.get("/lti/login?" + self.login_query(
            lti_storage_target="_parent"))
        self.assertEqual(response.code, 200, page)
        self.assertIsNone(response.headers.getRawHeaders("set-cookie"))  # no cookie needed
        self.assertIn('<script src="/static/lti13_storage.js">', page)
        return _data(page)

    @async_test
    async def test_the_storage_path_binds_the_launch_without_a_cookie(self):
        await self.start()
        login_browser = self.client()
        stored = await self.storage_login(login_browser)
        self.assertEqual((stored["mode"], stored["target"], stored["origin"]),
                         ("store", "_parent", self.platform.url("")))
        redirect = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(stored["next"]).query))
        self.assertTrue(stored["key"].endswith(redirect["state"]))
        # a browser without any cookie of ours posts the id_token
        browser = self.client()
        response, page = await self.post_launch(
            browser, self.platform.id_token(redirect["nonce"]), redirect["state"])
        self.assertEqual(response.code, 200, page)
        check = _data(page)
        self.assertEqual((check["mode"], check["key"], check["state"]),
                         ("check", stored["key"], redirect["state"]))
        self.assertEqual(self.query("SELECT count(*) FROM web_sessions"), [(0,)])
        confirm = check["confirm"]
        body = urllib.parse.urlencode({"state": redirect["state"], "value": stored["value"]})
        # a cross-site form cannot send our header
        response, text = await browser.post(confirm, data=body.encode(), headers=FORM)
        self.assertEqual(response.code, 403, text)
        headers = {**FORM, "X-Emaild-Lti-Storage": ["1"]}
        wrong = urllib.parse.urlencode({"state": redirect["state"], "value": "guess"})
        response, text = await browser.post(confirm, data=wrong.encode(), headers=headers)
        self.assertEqual(response.code, 401, text)
        response, text = await browser.post(confirm, data=body.encode(), headers=headers)
        self.assertEqual(response.code, 200, text)
        self.assertIn(self.base + "/home", text)
        response, home = await browser.get("/home")
        self.assertEqual(response.code, 200)
        self.assertIn("Grace Hopper", home)
        # once only
        response, text = await browser.post(confirm, data=body.encode(), headers=headers)
        self.assertEqual(response.code, 401, text)
