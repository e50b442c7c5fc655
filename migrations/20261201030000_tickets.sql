-- Tickets a ticketing sink (iTop) opened for vendor alerts: which alert of which source follows
-- which ticket, so a later record of the alert updates that ticket instead of opening another.
-- Forward-only: never edit once landed.
CREATE TABLE tickets (
    sink         TEXT    NOT NULL,
    source       TEXT    NOT NULL,
    -- The vendor's alert (or session) id the ticket follows.
    alert_key    TEXT    NOT NULL,
    stream       TEXT    NOT NULL,
    ticket_class TEXT    NOT NULL,
    -- The receiver's id of the ticket (iTop: the object key).
    ticket_id    TEXT    NOT NULL,
    -- Its human reference (iTop: `ref`, e.g. I-000123).
    ticket_ref   TEXT    NOT NULL,
    title        TEXT    NOT NULL,
    -- The vendor's word for the alert's state at the last record applied.
    vendor_state TEXT    NOT NULL,
    -- 1 once the resolve transition was applied (it is applied once).
    resolved     INTEGER NOT NULL,
    -- Log entries added after the ticket was opened.
    log_entries  INTEGER NOT NULL,
    -- Outbox position of the last record applied: a record at or before it is never applied twice.
    last_seq     INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (sink, source, alert_key)
);
CREATE INDEX tickets_by_ref ON tickets (ticket_ref);
CREATE INDEX tickets_by_alert ON tickets (alert_key);
