-- Mail addressed to people, by kind and course; per-person mail preferences
-- (the outbound part: the sender checks them when it claims a message).
ALTER TABLE outbox
    ADD COLUMN person_id  bigint REFERENCES people (id) ON DELETE SET NULL,
    ADD COLUMN course_id  bigint REFERENCES courses (id) ON DELETE SET NULL,
    -- the kind of mail (notification kind); NULL or 'transactional' cannot
    -- be unsubscribed from
    ADD COLUMN kind       text;
CREATE INDEX outbox_person ON outbox (person_id);

-- A person turned a kind of mail off, in one course or everywhere.
-- kind NULL: all (non-transactional) mail; course_id NULL: every course.
CREATE TABLE mail_optouts (
    id          bigserial PRIMARY KEY,
    person_id   bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    course_id   bigint REFERENCES courses (id) ON DELETE CASCADE,
    kind        text,
    source      text NOT NULL,  -- web, one-click, mailto, preferences
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX mail_optouts_unique
    ON mail_optouts (person_id, coalesce(course_id, 0), coalesce(kind, ''));
