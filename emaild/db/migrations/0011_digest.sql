-- The digest part: weekly updates and staff announcements.

-- The text staff add to a course's weekly update for one ISO week
-- ('2026-W48').  One per (course, week); setting it again replaces it.
CREATE TABLE digest_notes (
    course_id   bigint NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    week        text NOT NULL CHECK (week ~ '^[0-9]{4}-W[0-9]{2}$'),
    note        text NOT NULL,
    set_by      bigint REFERENCES people (id) ON DELETE SET NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (course_id, week)
);

-- One weekly update run per (course, week): started by whichever emaild
-- process got there first, finished when no learner is left to claim.
CREATE TABLE digest_runs (
    course_id    bigint NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    week         text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    PRIMARY KEY (course_id, week)
);

-- Who has had (course, week)'s update: claimed in the transaction that
-- queues their message, so nobody gets two, whatever runs at once.
-- outcome: queued (outbox_id set), nothing (no activity and no note),
-- no-address, rejected (the reason).
CREATE TABLE digest_sent (
    course_id  bigint NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    week       text NOT NULL,
    person_id  bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    outcome    text NOT NULL DEFAULT 'queued',
    outbox_id  bigint,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (course_id, week, person_id)
);

-- An announcement staff sent: its outbox rows carry `label` as their batch.
-- A re-send of the failed recipients is an announcement of its own
-- (label '<original>-resend<N>', resend_of the original).
CREATE TABLE announcements (
    label        text PRIMARY KEY,
    template     text NOT NULL,
    -- what it was sent to: a course, a group (and its course), or a list
    course_id    bigint REFERENCES courses (id) ON DELETE SET NULL,
    group_id     bigint REFERENCES groups (id) ON DELETE SET NULL,
    audience     text NOT NULL,
    -- the context every recipient shared (subject included)
    context      jsonb NOT NULL DEFAULT '{}',
    resend_of    text REFERENCES announcements (label) ON DELETE SET NULL,
    created_by   bigint REFERENCES people (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- recipients refused at enqueue time (no address, bad template values)
    rejected     integer NOT NULL DEFAULT 0,
    finished_queueing_at timestamptz
);
CREATE INDEX announcements_course ON announcements (course_id, created_at DESC);

-- A recipient's own template values (a --people CSV's other columns), kept
-- so their message can be rendered again for a re-send.
CREATE TABLE announcement_recipients (
    label      text NOT NULL REFERENCES announcements (label) ON DELETE CASCADE,
    person_id  bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    context    jsonb NOT NULL,
    PRIMARY KEY (label, person_id)
);

-- announcement progress counts and failures read the outbox by batch
CREATE INDEX IF NOT EXISTS outbox_batch ON outbox (batch) WHERE batch IS NOT NULL;
