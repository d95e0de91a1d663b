"""
The JSON API over real HTTP against a real database.

Every answer a test gets (successes and errors alike) is checked against the
OpenAPI document with openapi-core, and the document itself with
openapi-spec-validator.  (Schemathesis was not used: it drives the server
with a synchronous client from its own event loop, while these tests serve
from trial's reactor; and it would need a populated database to reach past
the 404s.  Validating every real answer, in the scenarios below, covers each
endpoint's success and error shapes.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import quote

import jsonschema
from openapi_core import OpenAPI
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate as validate_spec
from twisted.trial import unittest

from emaild.config import ConfigError, load_config
from emaild.web.api_openapi import SCHEMAS, document
from tests.web.test_web_links import TRACEBACK_MARKERS, async_test
from tests.webtest import WebTestCase

TOKEN = "t0ken-" + "x" * 40
OTHER_TOKEN = "0ther-" + "y" * 40
SPEC = OpenAPI.from_dict(document())


class ApiTestCase(WebTestCase):
    async def start_api(self, tokens=(TOKEN, OTHER_TOKEN), **sections):
        await self.start_web(api={"tokens": list(tokens), **sections.pop("api", {})},
                             **sections)
        self.http = self.client()

    async def call(self, method: str, path: str, body=None, token=TOKEN, raw: bytes | None = None,
                   headers=None):
        """
        (status, JSON answer, response); the answer is checked against the
        OpenAPI document.
        """
        headers = dict(headers or {})
        if token is not None:
            headers.setdefault("Authorization", f"Bearer {token}")
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            headers.setdefault("Content-Type", "application/json")
        response, text = await self.http.request(
            method, path, data=data, headers={k: [v] for k, v in headers.items()})
        for marker in TRACEBACK_MARKERS:
            self.assertNotIn(marker, text)
        if method == "HEAD":
            return response.code, None, response
        self.assertEqual(response.headers.getRawHeaders("content-type"),
                         ["application/json; charset=utf-8"], text)
        answer = json.loads(text)
        self.check_against_spec(method, path, data, headers, response, text, answer)
        return response.code, answer, response

    def check_against_spec(self, method, path, data, headers, response, text, answer):
        bare, _, query = path.partition("?")
        args = dict(part.split("=", 1) for part in query.split("&") if "=" in part)
        request = MockRequest(self.base, method, bare, args=args, data=data,
                              headers=headers, content_type="application/json")
        reply = MockResponse(text.encode(), status_code=response.code,
                             headers={"Content-Type": "application/json"})
        try:
            SPEC.validate_response(request, reply)
        except (PathNotFound, OperationNotFound):
            # not in the document (an unknown path or method): an error all the same
            self.assertGreaterEqual(response.code, 400)
            jsonschema.validate(answer, SCHEMAS["Error"])

    async def error(self, status: int, method: str, path: str, *fragments, **kwargs):
        code, answer, response = await self.call(method, path, **kwargs)
        self.assertEqual(code, status, answer)
        self.assertEqual(list(answer), ["error"])
        for fragment in fragments:
            self.assertIn(fragment, answer["error"])
        return response


class ConfigTests(unittest.TestCase):
    def test_tokens_from_toml_and_environment(self):
        config = load_config(None, environ={"EMAILD_API_TOKENS": f"{TOKEN}, {OTHER_TOKEN}",
                                            "EMAILD_API_MAX_BODY": "64KB"})
        self.assertEqual(config["api"]["tokens"], (TOKEN, OTHER_TOKEN))
        self.assertEqual(config["api"]["max_body"], 65536)
        defaults = load_config(None, environ={})
        self.assertEqual((defaults["api"]["tokens"], defaults["api"]["max_body"]), ((), 2**20))

    def test_short_or_odd_tokens_are_refused(self):
        for tokens, fragment in [(["short"], "shorter than 32"), ([5], "must be a string"),
                                 (["a b" + "c" * 40], "without spaces"), ("x", "shorter")]:
            with self.assertRaises(ConfigError) as caught:
                load_config(None, environ={}, overrides={"api": {"tokens": tokens}})
            self.assertEqual(caught.exception.key, "api.tokens")
            self.assertIn(fragment, str(caught.exception))


class DocumentTests(ApiTestCase):
    def test_the_document_is_valid_openapi(self):
        validate_spec(document())

    @async_test
    async def test_served_without_a_token(self):
        await self.start_api()
        code, answer, _ = await self.call("GET", "/api/v1/openapi.json", token=None)
        self.assertEqual((code, answer), (200, document()))


class AuthTests(ApiTestCase):
    @async_test
    async def test_missing_and_bad_tokens(self):
        await self.start_api()
        response = await self.error(401, "GET", "/api/v1/queue", "Authorization: Bearer",
                                    token=None)
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"),
                         ['Bearer realm="emaild"'])
        response = await self.error(401, "GET", "/api/v1/queue", "not valid", token="x" * 40)
        self.assertEqual(response.headers.getRawHeaders("www-authenticate"),
                         ['Bearer realm="emaild", error="invalid_token"'])
        await self.error(401, "GET", "/api/v1/queue", token=TOKEN[:-1])
        await self.error(401, "GET", "/api/v1/queue", headers={"Authorization": f"Basic {TOKEN}"},
                         token=None)
        for token in (TOKEN, OTHER_TOKEN):
            code, _, _ = await self.call("GET", "/api/v1/queue", token=token)
            self.assertEqual(code, 200)

    @async_test
    async def test_no_tokens_configured_disables_the_api(self):
        await self.start_api(tokens=())
        await self.error(403, "GET", "/api/v1/queue", "disabled")
        await self.error(403, "POST", "/api/v1/people", "disabled", body={"email": "a@b.org"})


class ErrorTests(ApiTestCase):
    @async_test
    async def test_unknown_paths_and_methods(self):
        await self.start_api()
        await self.error(404, "GET", "/api/v1/nothing", "/api/v1/nothing")
        await self.error(404, "GET", "/api/v1", token=None)
        await self.error(404, "GET", "/api/v1/people/abc")
        await self.error(404, "GET", "/api/v1/people/99999999999999999999999")
        response = await self.error(405, "DELETE", "/api/v1/queue", "allowed: GET, HEAD")
        self.assertEqual(response.headers.getRawHeaders("allow"), ["GET, HEAD"])
        await self.error(405, "GET", "/api/v1/people", "POST")

    @async_test
    async def test_bodies_that_are_not_json_objects(self):
        await self.start_api(api={"max_body": 200})
        await self.error(415, "POST", "/api/v1/people", "application/json",
                         raw=b"email=a@b.org",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        await self.error(415, "POST", "/api/v1/people", raw=b"{}", headers={"Content-Type": ""})
        await self.error(413, "POST", "/api/v1/people", "200 bytes",
                         body={"email": "a@example.org", "name": "x" * 300})
        await self.error(400, "POST", "/api/v1/people", "not valid JSON", raw=b"{nope")
        await self.error(400, "POST", "/api/v1/people", "not valid JSON", raw=b"[NaN]")
        await self.error(400, "POST", "/api/v1/people", "not UTF-8", raw=b'{"a": "\xff"}')
        await self.error(400, "POST", "/api/v1/people", "JSON object", raw=b"[1]")
        await self.error(400, "POST", "/api/v1/people", "not valid JSON", raw=b"[" * 150)

    @async_test
    async def test_validation_names_the_field(self):
        await self.start_api()
        await self.error(400, "POST", "/api/v1/people", "email: is required", body={})
        await self.error(400, "POST", "/api/v1/people", "email", body={"email": "not an address"})
        await self.error(400, "POST", "/api/v1/people", "email: must be a string",
                         body={"email": 5})
        await self.error(400, "POST", "/api/v1/people", "nickname: unknown field",
                         body={"email": "a@example.org", "nickname": "A"})
        await self.error(400, "POST", "/api/v1/people", "roles: needs a course",
                         body={"email": "a@example.org", "roles": ["Learner"]})
        await self.error(400, "POST", "/api/v1/groups", "name: is required", body={"course": "c"})
        await self.error(400, "POST", "/api/v1/presence", "group_id: must be a whole number",
                         body={"person_id": 1, "group_id": "1"})
        await self.error(400, "POST", "/api/v1/presence", "person_id: must be a positive id",
                         body={"person_id": 0, "group_id": 1})


class PeopleAndGroupsTests(ApiTestCase):
    @async_test
    async def test_upsert_a_person_into_a_course(self):
        await self.start_api()
        code, ada, _ = await self.call("POST", "/api/v1/people", {
            "email": "ada@example.org", "name": "Ada", "course": "net101",
            "roles": ["Instructor"]})
        self.assertEqual(code, 201)
        self.assertEqual((ada["email"], ada["name"], ada["groups"]),
                         ("ada@example.org", "Ada", []))
        (course,) = ada["courses"]
        self.assertEqual((course["title"], course["roles"]), ("net101", ["Instructor"]))
        code, again, _ = await self.call("POST", "/api/v1/people",
                                         {"email": "ADA@example.org", "name": "Ada L."})
        self.assertEqual((code, again["id"], again["name"]), (200, ada["id"], "Ada L."))
        code, got, _ = await self.call("GET", f"/api/v1/people/{ada['id']}")
        self.assertEqual((code, got), (200, again))
        code, _, _ = await self.call("HEAD", f"/api/v1/people/{ada['id']}")
        self.assertEqual(code, 200)
        await self.error(404, "GET", "/api/v1/people/999", "no person 999")

    @async_test
    async def test_groups_and_membership(self):
        await self.start_api()
        _, ada, _ = await self.call("POST", "/api/v1/people", {"email": "ada@example.org"})
        code, group, _ = await self.call("POST", "/api/v1/groups",
                                         {"course": "net101", "name": "Team A"})
        self.assertEqual((code, group["name"], group["members"]), (201, "Team A", 0))
        code, same, _ = await self.call("POST", "/api/v1/groups",
                                        {"course": "net101", "name": "Team A"})
        self.assertEqual((code, same), (200, group))
        await self.call("POST", "/api/v1/groups", {"course": "other", "name": "B"})
        member = f"/api/v1/groups/{group['id']}/members/{ada['id']}"
        code, joined, _ = await self.call("PUT", member)
        self.assertEqual((code, joined["member"], joined["changed"]), (201, True, True))
        code, joined, _ = await self.call("PUT", member)
        self.assertEqual((code, joined["changed"]), (200, False))
        _, listed, _ = await self.call("GET", "/api/v1/groups?course=net101")
        self.assertEqual([(g["name"], g["members"]) for g in listed["groups"]], [("Team A", 1)])
        _, everything, _ = await self.call("GET", "/api/v1/groups")
        self.assertEqual(len(everything["groups"]), 2)
        _, nothing, _ = await self.call("GET", "/api/v1/groups?course=none")
        self.assertEqual(nothing, {"groups": []})
        _, person, _ = await self.call("GET", f"/api/v1/people/{ada['id']}")
        self.assertEqual([g["name"] for g in person["groups"]], ["Team A"])

        code, left, _ = await self.call("DELETE", member)
        self.assertEqual((code, left["member"], left["changed"]), (200, False, True))
        _, left, _ = await self.call("DELETE", member)
        self.assertFalse(left["changed"])
        await self.error(404, "PUT", f"/api/v1/groups/999/members/{ada['id']}", "no group 999")
        await self.error(404, "PUT", f"/api/v1/groups/{group['id']}/members/999", "no person")

    @async_test
    async def test_presence_is_a_visit(self):
        await self.start_api()
        _, ada, _ = await self.call("POST", "/api/v1/people", {"email": "ada@example.org"})
        _, bob, _ = await self.call("POST", "/api/v1/people", {"email": "bob@example.org"})
        _, group, _ = await self.call("POST", "/api/v1/groups", {"course": "c", "name": "G"})
        await self.call("PUT", f"/api/v1/groups/{group['id']}/members/{ada['id']}")
        _, cy, _ = await self.call("POST", "/api/v1/people", {"email": "cy@example.org"})
        await self.call("PUT", f"/api/v1/groups/{group['id']}/members/{cy['id']}")
        code, answer, _ = await self.call("POST", "/api/v1/presence",
                                          {"person_id": ada["id"], "group_id": group["id"]})
        # like opening the group page: Cy, away, is told Ada is active
        self.assertEqual((code, answer["recorded"], answer["notified"]), (202, True, 1))
        self.assertEqual(self.query("SELECT recipient, kind FROM outbox"),
                         [("cy@example.org", "notification")])
        self.assertEqual(self.query("SELECT group_id, person_id FROM group_visits"),
                         [(group["id"], ada["id"])])
        await self.error(409, "POST", "/api/v1/presence", "not a current member",
                         body={"person_id": bob["id"], "group_id": group["id"]})
        await self.error(404, "POST", "/api/v1/presence", "no group",
                         body={"person_id": ada["id"], "group_id": 12345})


class MessageTests(ApiTestCase):
    async def people(self):
        _, self.ada, _ = await self.call("POST", "/api/v1/people",
                                         {"email": "ada@example.org", "name": "Ada"})
        _, self.bob, _ = await self.call("POST", "/api/v1/people",
                                         {"email": "bob@example.org", "name": "Bob"})

    @async_test
    async def test_send_by_id_and_address_with_rejections(self):
        await self.start_api()
        await self.people()
        code, answer, _ = await self.call("POST", "/api/v1/messages", {
            "template": "plain", "kind": "announcement", "batch": "week 3",
            "context": {"subject": "Week 3", "body": "Hello"},
            "recipients": [
                {"person_id": self.ada["id"], "context": {"body": "Hello Ada"}},
                {"email": "nobody@example.org"},
                {"email": "BOB@example.org"},
                {"person_id": 424242},
                {"email": "not an address"},
            ]})
        self.assertEqual(code, 202, answer)
        self.assertEqual([(q["index"], q["person_id"]) for q in answer["queued"]],
                         [(0, self.ada["id"]), (2, self.bob["id"])])
        self.assertEqual(answer["ids"], [q["id"] for q in answer["queued"]])
        self.assertEqual([r["index"] for r in answer["rejected"]], [1, 3, 4])
        self.assertIn("POST /api/v1/people", answer["rejected"][0]["reason"])
        self.assertIn("no person 424242", answer["rejected"][1]["reason"])
        rows = self.query("SELECT id, recipient, kind, batch, subject FROM outbox ORDER BY id")
        self.assertEqual([r[1:] for r in rows], [
            ("ada@example.org", "announcement", "week 3", "Week 3"),
            ("bob@example.org", "announcement", "week 3", "Week 3")])

        # the message's history, then the batch's progress
        mid = answer["ids"][0]
        code, history, _ = await self.call("GET", f"/api/v1/messages/{mid}")
        self.assertEqual((code, history["state"], history["attempts"]), (200, "queued", []))
        self.query("UPDATE outbox SET state = 'failed', reason = '550 no', attempts = 1"
                   " WHERE id = %s", (mid,))
        self.query("INSERT INTO outbox_attempts (outbox_id, outcome, code, reply)"
                   " VALUES (%s, 'failed', 550, '5.1.1 no such user')", (mid,))
        _, history, _ = await self.call("GET", f"/api/v1/messages/{mid}")
        self.assertEqual((history["state"], history["reason"], history["counted_attempts"]),
                         ("failed", "550 no", 1))
        (attempt,) = history["attempts"]
        self.assertEqual((attempt["outcome"], attempt["code"], attempt["reply"]),
                         ("failed", 550, "5.1.1 no such user"))
        await self.error(404, "GET", "/api/v1/messages/999999", "no message")

        code, batch, _ = await self.call("GET", f"/api/v1/batches/{quote('week 3')}")
        self.assertEqual((code, batch["batch"], batch["queued"], batch["failed"],
                          batch["total"], batch["finished"], batch["pending"]),
                         (200, "week 3", 1, 1, 2, 1, 1))
        await self.error(404, "GET", "/api/v1/batches/week%204", "'week 4'")

    @async_test
    async def test_bad_messages_name_the_field(self):
        await self.start_api()
        await self.people()
        ok = {"template": "plain", "kind": "announcement",
              "recipients": [{"person_id": self.ada["id"]}]}
        cases = [
            ({"template": "nope"}, "template:"),
            ({"template": "../etc/passwd"}, "template:"),
            ({"kind": "spam"}, "kind: no kind 'spam'"),
            ({"qos": "fast"}, "qos: no QoS class 'fast'"),
            ({"recipients": []}, "recipients: must not be empty"),
            ({"recipients": [{"person_id": 1, "email": "a@b.org"}]}, "recipients[0]: give exactly"),
            ({"recipients": [5]}, "recipients[0]: must be an object"),
            ({"recipients": [{"person_id": True}]}, "recipients[0].person_id"),
            ({"recipients": [{"email": "a@b.org", "cc": 1}]}, "recipients[0].cc: unknown"),
            ({"context": []}, "context: must be an object"),
            ({"course_id": 777}, "no course 777"),
        ]
        for change, fragment in cases:
            await self.error(400, "POST", "/api/v1/messages", fragment, body={**ok, **change})
        # a template value missing is the row's problem, not the request's
        code, answer, _ = await self.call("POST", "/api/v1/messages", ok)
        self.assertEqual((code, answer["ids"]), (202, []))
        self.assertIn("undefined", answer["rejected"][0]["reason"])


class QueueTests(ApiTestCase):
    @async_test
    async def test_queue_counts_equal_the_cli(self):
        await self.start_api()
        for state, qos in [("queued", "default"), ("sent", "default"), ("sent", "bulk"),
                           ("failed", "bulk"), ("suppressed", "transactional")]:
            self.query(
                "INSERT INTO outbox (template, qos, priority, recipient, envelope_from,"
                " message_id, body, state) VALUES ('plain', %s, 1, 'a@example.org',"
                " 'b' || random()::text, '<m>', 'x', %s)", (qos, state))
        self.query("INSERT INTO suppressions (address, reason) VALUES ('x@example.org', 'test')")
        code, answer, _ = await self.call("GET", "/api/v1/queue")
        self.assertEqual(code, 200)
        config = self.tmp / "cli.toml"
        config.write_text(f"[paths]\nstate_dir = {json.dumps(str(self.tmp / 'state'))}\n"
                          f"[database]\nurl = {json.dumps(self.dsn)}\npool_size = 1\n")
        result = subprocess.run([sys.executable, "-m", "emaild", "--config", str(config),
                                 "queue", "--json"], capture_output=True, text=True, timeout=60,
                                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)})
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(answer, json.loads(result.stdout))
        self.assertEqual((answer["sent"], answer["total"], answer["suppressed_addresses"]),
                         (2, 5, 1))


class AnnouncementTests(ApiTestCase):
    @async_test
    async def test_announce_to_a_course_follow_progress_and_resend_the_failed(self):
        await self.start_api()
        for address in ("ada@example.org", "bob@example.org"):
            await self.call("POST", "/api/v1/people", {"email": address, "course": "phys"})
        ((course_id,),) = self.query("SELECT id FROM courses WHERE context_id = 'phys'")
        code, answer, _ = await self.call("POST", "/api/v1/announcements", {
            "course_id": course_id, "subject": "Exam moved",
            "context": {"body": "The exam is on Friday."}})
        self.assertEqual((code, answer["queued"], answer["rejected"]), (202, 2, []))
        label = answer["label"]
        code, progress, _ = await self.call("GET", answer["progress"])
        self.assertEqual((code, progress["total"], progress["queued"]), (200, 2, 2))
        self.assertEqual(self.query("SELECT count(*) FROM outbox WHERE batch = %s", (label,)),
                         [(2,)])

        self.query("UPDATE outbox SET state = 'failed', reason = '550 no' WHERE id ="
                   " (SELECT min(id) FROM outbox WHERE batch = %s)", (label,))
        code, again, _ = await self.call("POST", f"/api/v1/announcements/{label}/resend")
        self.assertEqual((code, again["queued"]), (202, 1))
        self.assertTrue(again["label"].startswith(label + "-resend"))
        await self.error(409, "POST", f"/api/v1/announcements/{label}/resend", "no failed")
        await self.error(404, "POST", "/api/v1/announcements/nope/resend", "no announcement")

    @async_test
    async def test_announcement_errors(self):
        await self.start_api()
        await self.error(400, "POST", "/api/v1/announcements", "exactly one audience", body={})
        await self.error(400, "POST", "/api/v1/announcements", "course_id",
                         body={"group_id": 1, "course_id": 2})
        await self.error(400, "POST", "/api/v1/announcements", "person_ids",
                         body={"person_ids": [1, "two"]})
        await self.error(400, "POST", "/api/v1/announcements", "no course 99",
                         body={"course_id": 99})
        await self.error(400, "POST", "/api/v1/announcements", "no_such_template",
                         body={"course_id": 99, "template": "no_such_template"})
