-- The notifications part: "X is active in your group" mails.
--
-- A notice is one "X is active in G" event that was mailed.  At most one
-- per (actor, group) within [notifications] active_window: the notifier
-- checks for a recent notice and inserts the new one under a
-- transaction-scoped advisory lock on the (actor, group), so several
-- emaild processes on one database cannot both send one.
CREATE TABLE group_activity_notices (
    id         bigserial PRIMARY KEY,
    group_id   bigint NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    actor_id   bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX group_activity_notices_actor ON group_activity_notices (group_id, actor_id, at DESC);

-- Who a notice was mailed to, and on which UTC day: [notifications]
-- daily_limit counts these per recipient (under an advisory lock per
-- recipient).  The outbox rows carry the batch 'notify:<notice id>'.
CREATE TABLE group_activity_recipients (
    notice_id     bigint NOT NULL REFERENCES group_activity_notices (id) ON DELETE CASCADE,
    recipient_id  bigint NOT NULL REFERENCES people (id) ON DELETE CASCADE,
    day           date NOT NULL,
    PRIMARY KEY (notice_id, recipient_id)
);
CREATE INDEX group_activity_recipients_day ON group_activity_recipients (recipient_id, day);

-- "Is this member online?" looks up their recent visits by person.
CREATE INDEX group_visits_person ON group_visits (person_id, at DESC);
