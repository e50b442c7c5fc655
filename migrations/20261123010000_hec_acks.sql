-- Splunk HEC indexer acknowledgement: the channel each sink uses, and the acks it still waits
-- for, so that a restart asks about them instead of sending the batch again.
CREATE TABLE sink_channels (
    sink    TEXT PRIMARY KEY,
    channel TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE pending_acks (
    sink     TEXT    NOT NULL,
    channel  TEXT    NOT NULL,
    ack_id   INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,   -- the last outbox position of the batch the ack belongs to
    sent_at  INTEGER NOT NULL,
    PRIMARY KEY (sink, channel, ack_id)
) WITHOUT ROWID;
