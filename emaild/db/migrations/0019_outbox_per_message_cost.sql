-- Less work per sent message.  Every outbox row is updated twice on its
-- way out (queued -> sending -> sent), and neither update can be heap-only
-- (`state` is in the predicates of outbox_due and outbox_leases), so each
-- update inserts a new entry into every index of the table.
--
-- outbox_recipient (lower(recipient)) served no query: the suppression
-- check at claim time probes suppressions' own key with lower(recipient).
-- It cost an index insert, and lower(), per update and per enqueued row.
DROP INDEX IF EXISTS outbox_recipient;

-- The attempt log is written only by the outbound store, always for a row
-- it has just updated or looked up, and outbox rows are never deleted; the
-- foreign key's check ran a query per attempt row (most of the INSERT's
-- cost).
ALTER TABLE outbox_attempts DROP CONSTRAINT IF EXISTS outbox_attempts_outbox_id_fkey;
