-- Sender authentication of group posts and posts held for the member's
-- confirmation.

-- The Authentication-Results value (RFC 8601) emaild computed for the
-- message: SPF, DKIM and DMARC ('' for mail that was not checked, such as
-- bounces and unsubscribe requests).
ALTER TABLE inbound_messages ADD COLUMN authentication text NOT NULL DEFAULT '';

-- A relay recipient whose post is held waits in state 'held' (the relay
-- processor only takes 'received' rows) until the member confirms it
-- (-> received) or says it was not them (-> ignored).
ALTER TABLE inbound_recipients DROP CONSTRAINT inbound_recipients_state_check;
ALTER TABLE inbound_recipients ADD CONSTRAINT inbound_recipients_state_check
    CHECK (state IN ('received', 'held', 'done', 'ignored', 'failed'));
CREATE INDEX inbound_recipients_held ON inbound_recipients (message_id) WHERE state = 'held';

-- One "Did you send this?" question per held message: to whom, by which
-- link, and what they answered.
CREATE TABLE inbound_holds (
    id          bigserial PRIMARY KEY,
    message_id  bigint NOT NULL UNIQUE REFERENCES inbound_messages (id) ON DELETE CASCADE,
    person_id   bigint REFERENCES people (id) ON DELETE CASCADE,
    group_id    bigint REFERENCES groups (id) ON DELETE SET NULL,
    link_id     bigint NOT NULL UNIQUE,
    -- waiting -> sent (the member confirmed) | discarded (it was not them)
    -- | expired (no answer before the link expired)
    state       text NOT NULL DEFAULT 'waiting'
                CHECK (state IN ('waiting', 'sent', 'discarded', 'expired')),
    -- when the link expires (a copy, so expiry needs no other part's table)
    expires_at  timestamptz NOT NULL,
    -- why it was held (the decision's words)
    reason      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    decided_at  timestamptz
);
CREATE INDEX inbound_holds_waiting ON inbound_holds (expires_at) WHERE state = 'waiting';
