-- Links in mail: login-and-go-to and unsubscribe (the links part).
CREATE TABLE links (
    id            bigserial PRIMARY KEY,
    person_id     bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    purpose       text NOT NULL,
    -- login: the path or URL to land on; unsubscribe: the scope
    target        text NOT NULL,
    -- 64 random bits in two halves, encoded into the token and checked
    secret_hi     bigint NOT NULL,
    secret_lo     bigint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    uses          integer NOT NULL DEFAULT 0,
    last_used_at  timestamptz
);
-- minting the same link again while one is valid reuses it
CREATE INDEX links_reuse ON links (person_id, purpose, target, expires_at DESC);
