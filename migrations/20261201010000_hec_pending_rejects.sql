-- Splunk HEC: the records of a batch the receiver refused as invalid, kept with that batch's
-- pending acks, so that a restart which finds the acks answered still dead-letters them instead of
-- counting them delivered. Forward-only: never edit once landed.
CREATE TABLE pending_rejects (
    sink   TEXT    NOT NULL,
    seq    INTEGER NOT NULL,   -- the refused record's outbox position
    reason TEXT    NOT NULL,
    PRIMARY KEY (sink, seq)
) WITHOUT ROWID;
