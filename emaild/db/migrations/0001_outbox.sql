-- The outbox: one row per recipient, rendered at enqueue time.
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    template        text NOT NULL,
    qos             text NOT NULL,
    -- copied from the QoS class at enqueue time so the claim can order by it
    priority        integer NOT NULL,
    recipient       text NOT NULL,
    -- per-message bounce address on the relay domain (VERP), unique
    envelope_from   text NOT NULL UNIQUE,
    message_id      text NOT NULL,
    subject         text NOT NULL DEFAULT '',
    body            bytea NOT NULL,
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'sending', 'sent', 'failed', 'suppressed')),
    -- why it is in its state: the last reply, the suppression, the give-up
    reason          text,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_owner     text,
    lease_until     timestamptz,
    -- free label for the run that queued it (CSV file name, announcement)
    batch           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX outbox_due ON outbox (priority DESC, next_attempt_at, id) WHERE state = 'queued';
CREATE INDEX outbox_leases ON outbox (lease_until) WHERE state = 'sending';
CREATE INDEX outbox_recipient ON outbox (lower(recipient));

-- Every attempt's outcome and the relay's reply, kept for ever.
CREATE TABLE outbox_attempts (
    id          bigserial PRIMARY KEY,
    outbox_id   bigint NOT NULL REFERENCES outbox (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    outcome     text NOT NULL,
    -- the emaild process that made the attempt (host:pid:random)
    sender      text,
    code        integer,
    reply       text NOT NULL DEFAULT ''
);
CREATE INDEX outbox_attempts_message ON outbox_attempts (outbox_id, id);

-- Token buckets shared by every emaild process on this database.  Times are
-- seconds since the epoch on the senders' clocks.
CREATE TABLE send_buckets (
    name          text PRIMARY KEY,
    tokens        double precision NOT NULL,
    refilled_at   double precision NOT NULL,
    -- multiplier on the rate while the relay is throttling us (1 = normal)
    slowdown      double precision NOT NULL DEFAULT 1.0,
    slowed_at     double precision NOT NULL DEFAULT 0,
    -- the relay said its daily quota is used up: send nothing before this
    paused_until  double precision NOT NULL DEFAULT 0
);

-- Recipients accepted by the relay per UTC day, for [relay] daily_quota.
CREATE TABLE send_daily_usage (
    day   date PRIMARY KEY,
    sent  integer NOT NULL DEFAULT 0
);

-- Addresses that must not be mailed (bounced, complained, unsubscribed from
-- everything); checked when a message is claimed.
CREATE TABLE suppressions (
    address     text PRIMARY KEY,  -- lower-cased
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
