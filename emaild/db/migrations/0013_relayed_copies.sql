-- The group relay sends each member at most one copy of a received message
-- per group, whatever the message's headers say (no Message-ID, a new one
-- each time) and however often it was addressed (the same reply address in
-- several RCPTs) or processed.  The relay inserts here before it queues a
-- copy and queues copies only for the rows it inserted (ON CONFLICT DO
-- NOTHING), so the database itself refuses a second copy, also between
-- processes.
CREATE TABLE group_relayed_copies (
    message_id  bigint NOT NULL REFERENCES inbound_messages (id) ON DELETE CASCADE,
    group_id    bigint NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    person_id   bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    PRIMARY KEY (message_id, group_id, person_id)
);
