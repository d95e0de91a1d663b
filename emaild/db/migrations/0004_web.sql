-- Web sessions and LTI nonces (the web part).
CREATE TABLE web_sessions (
    -- sha256 of the cookie's token: a leaked table does not leak sessions
    id             text PRIMARY KEY,
    person_id      bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    csrf_token     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    revoked_at     timestamptz
);
CREATE INDEX web_sessions_person ON web_sessions (person_id);

CREATE TABLE lti_nonces (
    consumer_key  text NOT NULL,
    nonce         text NOT NULL,
    seen_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_key, nonce)
);
CREATE INDEX lti_nonces_seen ON lti_nonces (seen_at);

-- "send me a fresh link" requests, to rate-limit them per person
CREATE TABLE fresh_link_requests (
    person_id     bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    requested_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fresh_link_requests_person ON fresh_link_requests (person_id, requested_at);
