-- secrelay store, first schema. Forward-only: never edit this file once landed; add a new migration.
-- Times are Unix epoch milliseconds (UTC) unless a column name says otherwise.

-- One row per (source, stream, tenant): the vendor position and the health of that partition.
CREATE TABLE cursors (
    source          TEXT    NOT NULL,
    stream          TEXT    NOT NULL,
    tenant          TEXT    NOT NULL DEFAULT '',
    cursor          TEXT,                       -- opaque to the core; owned by the source module
    updated_at      INTEGER,                    -- when the cursor last moved
    last_success_at INTEGER,                    -- last poll that committed (even an empty page)
    last_error      TEXT,                       -- last failure message (never holds a secret)
    last_error_at   INTEGER,
    newest_event_at INTEGER,                    -- newest event time committed, for lag
    events_total    INTEGER NOT NULL DEFAULT 0, -- new events committed (after dedup)
    duplicates_total INTEGER NOT NULL DEFAULT 0,-- events dropped by the seen-set
    clamps_total    INTEGER NOT NULL DEFAULT 0, -- cursor clamped to the vendor horizon
    PRIMARY KEY (source, stream, tenant)
) WITHOUT ROWID;

-- Durable seen-set: ids already appended to the outbox, pruned by age.
CREATE TABLE seen (
    source     TEXT    NOT NULL,
    stream     TEXT    NOT NULL,
    event_id   TEXT    NOT NULL,
    event_time INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL,
    PRIMARY KEY (source, stream, event_id)
) WITHOUT ROWID;
CREATE INDEX seen_by_seen_at ON seen (seen_at);

-- The outbox log. AUTOINCREMENT: a sequence number is never reused, even after the table empties,
-- so sink offsets stay monotonic.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    source      TEXT    NOT NULL,
    stream      TEXT    NOT NULL,
    tenant      TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    event_time  INTEGER NOT NULL,
    ingest_time INTEGER NOT NULL,
    severity    INTEGER NOT NULL,
    record      TEXT    NOT NULL,               -- the vendor's record, compact JSON, whole
    bytes       INTEGER NOT NULL                -- size counted against outbox.max_bytes
);
CREATE INDEX outbox_by_source ON outbox (source, seq);

-- Running totals of the outbox, kept by triggers so the cap check is O(1).
CREATE TABLE outbox_totals (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    rows  INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT INTO outbox_totals (id, rows, bytes) VALUES (1, 0, 0);
CREATE TRIGGER outbox_totals_insert AFTER INSERT ON outbox BEGIN
    UPDATE outbox_totals SET rows = rows + 1, bytes = bytes + NEW.bytes WHERE id = 1;
END;
CREATE TRIGGER outbox_totals_delete AFTER DELETE ON outbox BEGIN
    UPDATE outbox_totals SET rows = rows - 1, bytes = bytes - OLD.bytes WHERE id = 1;
END;

-- Each sink is a consumer of the log: everything with seq <= delivered_seq was accepted by its receiver.
CREATE TABLE sink_offsets (
    sink            TEXT    PRIMARY KEY,
    delivered_seq   INTEGER NOT NULL DEFAULT 0,
    updated_at      INTEGER,
    delivered_total INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    last_error_at   INTEGER
) WITHOUT ROWID;

-- Records a receiver rejected as invalid: kept with the reason instead of blocking the log.
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sink        TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    source      TEXT    NOT NULL,
    stream      TEXT    NOT NULL,
    tenant      TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    event_time  INTEGER NOT NULL,
    record      TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX dead_letters_by_sink ON dead_letters (sink);
