-- Issue 13: each record is written once, compressed, and the seen-set keys are small integers.
-- Forward-only: never edit once landed.
--
-- Rows of the older `outbox` are moved into chunks by the first writer that opens the file
-- (`src/store/legacy.rs`): SQL alone cannot compress. After that it stays empty.

-- The outbox log in chunks: a run of consecutive records of one partition, committed together,
-- stored as one compressed blob. Record i of a chunk has position first_seq + i, so positions stay
-- per record (sink offsets, pending acks and rejects, tickets and dead letters keep using them).
CREATE TABLE outbox_chunks (
    first_seq   INTEGER PRIMARY KEY,        -- position of its first record
    last_seq    INTEGER NOT NULL,           -- position of its last record (first_seq + records - 1)
    source      TEXT    NOT NULL,
    stream      TEXT    NOT NULL,
    tenant      TEXT    NOT NULL,
    ingest_time INTEGER NOT NULL,           -- when the page was committed (ms)
    target_sink TEXT,                       -- a re-queued dead letter: for this sink alone
    records     INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,           -- the records' JSON text, uncompressed (the cap counts it)
    body        BLOB    NOT NULL            -- the records, encoded and compressed (chunk.rs)
);
-- Readers scan from a position in log order; chunks never overlap, so last_seq orders as first_seq.
CREATE INDEX outbox_chunks_by_last_seq ON outbox_chunks (last_seq);

-- The next position to hand out. Positions are never reused, even once every chunk is pruned.
CREATE TABLE outbox_head (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    next_seq INTEGER NOT NULL
);
INSERT INTO outbox_head (id, next_seq) VALUES (1, 1 + MAX(
    COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),
    COALESCE((SELECT MAX(seq) FROM outbox), 0)));

-- Which (source, stream) a seen id belongs to, as a small integer.
CREATE TABLE seen_scopes (
    scope  INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    stream TEXT NOT NULL,
    UNIQUE (source, stream)
);

-- The seen-set: an id is its scope, its key time and a 64-bit hash of its text. Keyed by time
-- first, so a page of events (which the vendor serves in time order) lands in a few B-tree pages
-- instead of touching the whole set. Rows of the older `seen` table stay where they are and are
-- still consulted until they age out (`src/store/seen.rs`): their key time is not known.
CREATE TABLE seen_ids (
    scope      INTEGER NOT NULL,
    key_time   INTEGER NOT NULL,            -- ms: the time that keys the id (Event::key_time)
    id_hash    INTEGER NOT NULL,            -- FNV-1a 64 of the vendor's id (seen.rs)
    event_time INTEGER NOT NULL,            -- ms: the event's time; a reset forgets by it
    seen_at    INTEGER NOT NULL,            -- last time the vendor served it (ms)
    PRIMARY KEY (scope, key_time, id_hash)
) WITHOUT ROWID;
CREATE INDEX seen_ids_by_seen_at ON seen_ids (seen_at);
