-- The inbound part and the group relay: reply-address secrets, received
-- mail, its per-recipient processing state, group posts (threads) and
-- bounces.

-- Each membership's reply address carries 64 random bits the server checks
-- (two 32-bit halves: hashids encodes non-negative integers).  A membership
-- that is left and rejoined gets new ones, so the old address stays dead.
CREATE FUNCTION emaild_random32() RETURNS bigint LANGUAGE sql VOLATILE AS
    $$ SELECT ('x' || substr(md5(gen_random_uuid()::text), 1, 8))::bit(32)::bigint $$;
ALTER TABLE group_members
    ADD COLUMN reply_secret_hi bigint NOT NULL DEFAULT emaild_random32(),
    ADD COLUMN reply_secret_lo bigint NOT NULL DEFAULT emaild_random32();

-- One SMTP transaction as received (or one post from the group page),
-- stored before the 250 reply.
CREATE TABLE inbound_messages (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- client IP (or 'web' for the group page), its HELO name, TLS or not
    peer         text NOT NULL DEFAULT '',
    helo         text NOT NULL DEFAULT '',
    tls          boolean NOT NULL DEFAULT false,
    -- '' for the null sender <>
    mail_from    text NOT NULL,
    size         integer NOT NULL,
    raw          bytea NOT NULL
);

-- What each accepted recipient of a message means, and how far it got.
-- received -> done | ignored | failed, with the reason; a crash in between
-- leaves it received and the processor takes it again.
CREATE TABLE inbound_recipients (
    id            bigserial PRIMARY KEY,
    message_id    bigint NOT NULL REFERENCES inbound_messages (id) ON DELETE CASCADE,
    address       text NOT NULL,
    purpose       text NOT NULL CHECK (purpose IN ('relay', 'unsubscribe', 'bounce')),
    -- relay: the group and the member whose reply address it is;
    -- unsubscribe: the link; bounce: the outbox message that bounced
    group_id      bigint REFERENCES groups (id) ON DELETE SET NULL,
    person_id     bigint REFERENCES people (id) ON DELETE SET NULL,
    link_id       bigint,
    outbox_id     bigint,
    state         text NOT NULL DEFAULT 'received'
                  CHECK (state IN ('received', 'done', 'ignored', 'failed')),
    reason        text,
    attempts      integer NOT NULL DEFAULT 0,
    processed_at  timestamptz
);
CREATE INDEX inbound_recipients_pending ON inbound_recipients (id) WHERE state = 'received';
CREATE INDEX inbound_recipients_message ON inbound_recipients (message_id);

-- A post to a group: what the members received, under our own Message-ID.
CREATE TABLE group_posts (
    id                   bigserial PRIMARY KEY,
    group_id             bigint NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    author_id            bigint REFERENCES people (id) ON DELETE SET NULL,
    inbound_id           bigint UNIQUE REFERENCES inbound_recipients (id) ON DELETE SET NULL,
    -- the first post of its thread (itself for a new thread)
    thread_id            bigint REFERENCES group_posts (id) ON DELETE SET NULL,
    message_id           text NOT NULL UNIQUE,
    -- the author's own Message-ID, so replies that cite it still thread
    original_message_id  text,
    subject              text NOT NULL DEFAULT '',
    copies               integer NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX group_posts_group ON group_posts (group_id, id DESC);
CREATE INDEX group_posts_original ON group_posts (group_id, original_message_id);

-- Delivery failures reported back to a bounce address.
CREATE TABLE bounces (
    id          bigserial PRIMARY KEY,
    address     text NOT NULL,  -- lower-cased
    outbox_id   bigint,
    person_id   bigint REFERENCES people (id) ON DELETE SET NULL,
    hard        boolean NOT NULL,
    status      text NOT NULL DEFAULT '',
    diagnostic  text NOT NULL DEFAULT '',
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bounces_address ON bounces (address) WHERE hard;

-- A member opened their group's page (the notifications part reads this).
CREATE TABLE group_visits (
    id         bigserial PRIMARY KEY,
    group_id   bigint NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    person_id  bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX group_visits_group ON group_visits (group_id, at DESC);
