-- Dead letters a sink rejected can be re-queued for that sink alone (`secrelay dead-letters retry`).
-- Forward-only: never edit once landed.

-- NULL: the row is for every sink routed to its source (as before). A sink name: a re-queued dead
-- letter, appended at the end of the log for that sink only; only that sink reads it, and it is
-- pruned once that sink has passed it.
ALTER TABLE outbox ADD COLUMN target_sink TEXT;
CREATE INDEX outbox_by_target_sink ON outbox (target_sink, seq) WHERE target_sink IS NOT NULL;

-- What a re-queued record needs to be encoded as it was the first time. NULL on dead letters kept
-- before this migration (a retry then takes them from the outbox row if still there, else 0 and the
-- dead-letter time).
ALTER TABLE dead_letters ADD COLUMN severity INTEGER;
ALTER TABLE dead_letters ADD COLUMN ingest_time INTEGER;
