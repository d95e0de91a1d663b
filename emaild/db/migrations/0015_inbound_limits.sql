-- Limits of the inbound server that need the database: a member's posts in
-- the last hour (counted at RCPT), and what was refused for that, so that
-- `emaild inbound` can show it.

-- A member's recent posts, newest first (the per-member posting rate).
CREATE INDEX inbound_recipients_poster
    ON inbound_recipients (group_id, person_id, message_id DESC) WHERE purpose = 'relay';

-- Attempts refused before anything was stored, one row per (reason,
-- subject, hour) with a count, so a client that keeps trying cannot grow
-- the table faster than one row an hour per subject.
CREATE TABLE inbound_refusals (
    id         bigserial PRIMARY KEY,
    -- 'rate': over [groups] max_posts_per_hour
    reason     text NOT NULL,
    -- what the refusal was about, e.g. 'group 3 person 7'
    subject    text NOT NULL,
    hour       timestamptz NOT NULL,
    group_id   bigint REFERENCES groups (id) ON DELETE CASCADE,
    person_id  bigint REFERENCES people (id) ON DELETE CASCADE,
    -- the last attempt's RCPT address and envelope sender
    address    text NOT NULL,
    mail_from  text NOT NULL,
    -- the reply it got
    reply      text NOT NULL,
    attempts   integer NOT NULL DEFAULT 1,
    first_at   timestamptz NOT NULL DEFAULT now(),
    last_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (reason, subject, hour)
);
CREATE INDEX inbound_refusals_recent ON inbound_refusals (last_at DESC);
