-- Whether a queued message carries List-Unsubscribe, decided when it was
-- rendered from its kind: only such messages are checked against the
-- person's mail_optouts when claimed (transactional mail never is).
ALTER TABLE outbox ADD COLUMN unsubscribable boolean NOT NULL DEFAULT false;
