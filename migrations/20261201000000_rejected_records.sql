-- Records a source could not turn into events (no id, a time or number that does not parse): kept
-- with the reason instead of failing their page forever. Forward-only: never edit once landed.

CREATE TABLE rejected_records (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    source  TEXT    NOT NULL,
    stream  TEXT    NOT NULL,
    tenant  TEXT    NOT NULL,
    url     TEXT    NOT NULL,   -- the request it came from (never holds a credential)
    reason  TEXT    NOT NULL,
    record  TEXT    NOT NULL,   -- the vendor's text, at most 64 KiB
    at      INTEGER NOT NULL,   -- when it was first rejected
    -- A record fetched again (overlapping windows, boundary repeats) is kept once.
    UNIQUE (source, stream, tenant, record)
);

-- Per partition, how many records were rejected in all (for `secrelay state`).
ALTER TABLE cursors ADD COLUMN rejected_total INTEGER NOT NULL DEFAULT 0;
