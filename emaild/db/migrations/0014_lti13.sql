-- LTI 1.3 (the people part): OIDC login states, nonces, identities.

-- One OIDC login in progress: made by /lti/login, used once by the launch.
CREATE TABLE lti13_login_states (
    -- sha256 of the state sent to the platform (a leaked table leaks no state)
    state_hash      text PRIMARY KEY,
    -- the nonce sent with it; the id_token must carry exactly this one
    nonce           text NOT NULL,
    -- [lti13.platforms.<name>] the login was for
    platform        text NOT NULL,
    -- sha256 of the value the browser keeps (a cookie, or the platform's
    -- postMessage storage): binds the launch to the browser that logged in
    browser_hash    text NOT NULL,
    -- the platform's lti_storage_target, when it offered postMessage storage
    storage_target  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    -- a verified launch waiting for the browser's postMessage storage check
    pending_launch  jsonb,
    confirmed_at    timestamptz
);
CREATE INDEX lti13_login_states_expires ON lti13_login_states (expires_at);

-- Nonces of accepted id_tokens, per issuer: never accepted twice.
CREATE TABLE lti13_nonces (
    issuer   text NOT NULL,
    nonce    text NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer, nonce)
);
CREATE INDEX lti13_nonces_seen ON lti13_nonces (seen_at);

-- A platform's user (issuer, sub) is always the same person.
CREATE TABLE lti13_identities (
    issuer      text NOT NULL,
    sub         text NOT NULL,
    person_id   bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer, sub)
);
CREATE INDEX lti13_identities_person ON lti13_identities (person_id);

-- The course rosters from Names and Role Provisioning Services.
CREATE TABLE lti13_roster_syncs (
    course_id        bigint PRIMARY KEY REFERENCES courses (id) ON DELETE CASCADE,
    platform         text NOT NULL,
    -- the NRPS context_memberships_url of the latest launch that offered it
    memberships_url  text NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    members          integer,
    error            text
);

-- Who the roster listed; left_at is set when a member is listed as
-- Inactive or Deleted or is no longer listed (their course membership ends).
CREATE TABLE lti13_roster (
    course_id   bigint NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    person_id   bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    status      text NOT NULL,
    synced_at   timestamptz NOT NULL DEFAULT now(),
    left_at     timestamptz,
    PRIMARY KEY (course_id, person_id)
);
