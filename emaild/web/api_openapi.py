"""
The OpenAPI 3.1 document of C{/api/v1}, served at C{GET /api/v1/openapi.json}.

The tests validate it (openapi-spec-validator) and check every answer the
API really gives, successes and errors, against it (openapi-core): keep it
in step with L{emaild.web.routes_api}.
"""

from __future__ import annotations

import copy

from emaild.outbound.store import STATES

_ID = {"type": "integer", "minimum": 1}
_STR = {"type": "string"}
_NULLABLE_STR = {"type": ["string", "null"]}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict, required=None, additional=False) -> dict:
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else list(required),
            "additionalProperties": additional}


_COUNTS = {state: {"type": "integer", "minimum": 0} for state in STATES}

SCHEMAS = {
    "Error": _object({"error": {**_STR, "description": "What was wrong, naming the field"}}),
    "Person": _object({
        "id": _ID, "email": _NULLABLE_STR, "name": _STR,
        "courses": {"type": "array", "items": _object(
            {"id": _ID, "title": _STR, "roles": {"type": "array", "items": _STR}})},
        "groups": {"type": "array", "items": _object({"id": _ID, "name": _STR, "course": _STR})},
    }),
    "PersonInput": _object({
        "email": {**_STR, "format": "email", "maxLength": 254},
        "name": {**_STR, "description": "Display name; empty or absent keeps the stored one"},
        "course": {**_STR, "maxLength": 255, "description": "Course key (context_id); the "
                   "person becomes a member, the course is made if needed"},
        "roles": {"type": "array", "items": {**_STR, "minLength": 1}, "maxItems": 50,
                  "description": "Roles in that course (needs course); replace the old ones"},
    }, required=["email"]),
    "Group": _object({"id": _ID, "name": _STR, "course_id": _ID,
                      "course": {**_STR, "description": "The course's title (or key)"},
                      "members": {"type": "integer", "minimum": 0}}),
    "GroupInput": _object({"course": {**_STR, "minLength": 1, "maxLength": 255},
                           "name": {**_STR, "minLength": 1, "maxLength": 200}}),
    "GroupList": _object({"groups": {"type": "array", "items": _ref("Group")}}),
    "Membership": _object({"group_id": _ID, "person_id": _ID, "member": {"type": "boolean"},
                           "changed": {"type": "boolean",
                                       "description": "false: it already was so"}}),
    "Presence": _object({"person_id": _ID, "group_id": _ID}),
    "PresenceRecorded": _object({"recorded": {"const": True}, "person_id": _ID,
                                 "group_id": _ID,
                                 "notified": {"type": "integer", "minimum": 0,
                                              "description": "away members notified that "
                                                             "this person is active"}}),
    "MessageInput": _object({
        "template": {**_STR, "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"},
        "kind": {**_STR, "description": "A configured kind of mail ([kinds.<name>]): decides "
                 "List-Unsubscribe, opt-outs and the default QoS class"},
        "qos": {**_STR, "description": "A configured QoS class; default: the kind's"},
        "course_id": {**_ID, "description": "The course the mail is about (opt-out scope)"},
        "batch": {**_STR, "maxLength": 200,
                  "description": "Label to follow progress at /api/v1/batches/{label}"},
        "context": {"type": "object", "description": "Template values for every recipient"},
        "recipients": {"type": "array", "minItems": 1, "maxItems": 10000, "items": {
            "type": "object", "additionalProperties": False,
            "properties": {"person_id": _ID, "email": {**_STR, "maxLength": 254},
                           "context": {"type": "object",
                                       "description": "Template values for this recipient"}},
            "oneOf": [{"required": ["person_id"]}, {"required": ["email"]}]}},
    }, required=["template", "kind", "recipients"]),
    "AnnouncementInput": _object({
        "template": {**_STR, "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
                     "description": "Default: announcement"},
        "course_id": {**_ID, "description": "Every member of this course; with person_ids, "
                                            "the course the mail is about"},
        "group_id": {**_ID, "description": "Every current member of this group"},
        "person_ids": {"type": "array", "minItems": 1, "maxItems": 10000, "items": _ID},
        "context": {"type": "object", "description": "Template values for every recipient"},
        "subject": {**_STR, "maxLength": 200},
    }, required=[]),
    "AnnouncementQueued": _object({
        "label": {**_STR, "description": "The batch label: follow it at /api/v1/batches/{label}"},
        "queued": {"type": "integer", "minimum": 0},
        "rejected": {"type": "array", "items": _object(
            {"person_id": {"type": ["integer", "null"]}, "reason": _STR})},
        "progress": _STR,
    }),
    "MessagesQueued": _object({
        "ids": {"type": "array", "items": _ID},
        "queued": {"type": "array", "items": _object(
            {"index": {"type": "integer", "minimum": 0}, "person_id": _ID, "id": _ID})},
        "rejected": {"type": "array", "items": _object(
            {"index": {"type": "integer", "minimum": 0},
             "person_id": {"type": ["integer", "null"]}, "email": _NULLABLE_STR,
             "reason": _STR})},
    }),
    "MessageHistory": _object({
        "id": _ID, "state": {"enum": list(STATES)}, "reason": _NULLABLE_STR,
        "recipient": _STR,
        "counted_attempts": {"type": "integer", "minimum": 0,
                             "description": "Attempts that count toward the class's limit"},
        "attempts": {"type": "array", "items": _object({
            "at": {**_STR, "format": "date-time"}, "outcome": _STR,
            "code": {"type": ["integer", "null"]}, "reply": _STR})},
    }),
    "QueueCounts": _object({
        **_COUNTS, "total": {"type": "integer", "minimum": 0},
        "by_class": {"type": "object", "additionalProperties": _object(_COUNTS)},
        "suppressed_addresses": {"type": "integer", "minimum": 0},
    }),
    "BatchProgress": _object({
        "batch": _STR, **_COUNTS, "total": {"type": "integer", "minimum": 1},
        "finished": {"type": "integer", "minimum": 0},
        "pending": {"type": "integer", "minimum": 0},
        "by_class": {"type": "object", "additionalProperties": _object(_COUNTS)},
    }),
}

_ERRORS = {
    "400": "Invalid input; the message names the field",
    "401": "Missing or bad bearer token",
    "403": "The API is disabled (no [api] tokens configured)",
    "404": "No such thing",
    "405": "Method not allowed here",
    "409": "Conflicts with the current state",
    "413": "Body over [api] max_body",
    "415": "Body is not application/json",
    "500": "Internal error (logged)",
    "503": "Database unavailable",
}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: dict, errors: str, body: str | None = None, params=(),
        auth: bool = True) -> dict:
    codes = set(errors.split()) | {"405", "500"}
    if auth:
        codes |= {"401", "403", "503"}
    if body:
        codes |= {"400", "413", "415"}
    responses = {status: _json(_ref(schema), text) for status, (schema, text) in ok.items()}
    for code in sorted(codes):
        responses[code] = _json(_ref("Error"), _ERRORS[code])
    op = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = list(params)
    if body:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": _ref(body)}}}
    if not auth:
        op["security"] = []
    return op


def _path(name: str, schema: dict | None = None, description: str = "") -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema or _ID,
            "description": description}


_PERSON_ID, _GROUP_ID = _path("person_id"), _path("group_id")

PATHS = {
    "/api/v1/people": {"post": _op(
        "Add a person by address, or update the one who has it",
        {"201": ("Person", "Created"), "200": ("Person", "Updated")}, "", body="PersonInput")},
    "/api/v1/people/{person_id}": {"get": _op(
        "A person with their courses and current groups", {"200": ("Person", "The person")},
        "404", params=[_PERSON_ID])},
    "/api/v1/groups": {
        "get": _op("Groups, of one course or all", {"200": ("GroupList", "The groups")}, "400",
                   params=[{"name": "course", "in": "query", "required": False,
                            "schema": _STR, "description": "Course key (context_id)"}]),
        "post": _op("Make a group in a course (the course is made if needed)",
                    {"201": ("Group", "Created"), "200": ("Group", "It existed")}, "",
                    body="GroupInput")},
    "/api/v1/groups/{group_id}/members/{person_id}": {
        "put": _op("Make the person a current member (of the group and its course)",
                   {"201": ("Membership", "Joined"), "200": ("Membership", "Already one")},
                   "404", params=[_GROUP_ID, _PERSON_ID]),
        "delete": _op("End the person's membership (their reply address stops working)",
                      {"200": ("Membership", "Left, or was not a member")}, "404",
                      params=[_GROUP_ID, _PERSON_ID])},
    "/api/v1/presence": {"post": _op(
        "Record that a member was present in their group (a visit)",
        {"202": ("PresenceRecorded", "Recorded")}, "404 409", body="Presence")},
    "/api/v1/messages": {"post": _op(
        "Queue a template for people (by id or address), one message each",
        {"202": ("MessagesQueued", "Queued; rows that could not be are listed with reasons")},
        "", body="MessageInput")},
    "/api/v1/messages/{message_id}": {"get": _op(
        "One message's state and every delivery attempt with the relay's reply",
        {"200": ("MessageHistory", "The history")}, "404", params=[_path("message_id")])},
    "/api/v1/queue": {"get": _op(
        "Outbox counts, as `emaild queue --json` prints them", {"200": ("QueueCounts", "")},
        "")},
    "/api/v1/announcements": {"post": _op(
        "Send a template to a course, a group or a list of people (one message each)",
        {"202": ("AnnouncementQueued", "Queued; people who could not be are listed")},
        "", body="AnnouncementInput")},
    "/api/v1/announcements/{label}/resend": {"post": _op(
        "Send an announcement again to the people whose message failed, and only them",
        {"202": ("AnnouncementQueued", "Queued under <label>-resend<N>")}, "404 409",
        params=[_path("label", {**_STR, "minLength": 1}, "The announcement's label")])},
    "/api/v1/batches/{label}": {"get": _op(
        "Progress of the messages queued with a batch label (an announcement)",
        {"200": ("BatchProgress", "Counts by state")}, "404",
        params=[_path("label", {**_STR, "minLength": 1}, "The batch label, URL-encoded")])},
    "/api/v1/openapi.json": {"get": {
        "summary": "This document", "security": [],
        "responses": {"200": {"description": "The OpenAPI document",
                              "content": {"application/json": {"schema": {"type": "object"}}}},
                      "405": _json(_ref("Error"), _ERRORS["405"])}}},
}

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "emaild API", "version": "1",
             "description": "Course e-mail: people, groups, templated mail and delivery "
                            "state.  Every error is `{\"error\": \"...\"}`."},
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "One of the [api] tokens"}},
    },
}


def document() -> dict:
    return copy.deepcopy(DOCUMENT)
