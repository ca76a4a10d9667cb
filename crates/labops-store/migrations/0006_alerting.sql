-- Alerting (issue #6): every alert by fingerprint (the latest received, written before the sender
-- is answered), incidents with their timeline, silences and maintenance windows, notifications.
CREATE TABLE incidents (
    id            INTEGER PRIMARY KEY,
    key           TEXT NOT NULL,
    title         TEXT NOT NULL,
    severity      TEXT NOT NULL,
    state         TEXT NOT NULL,
    root_entity   TEXT,
    opened_ms     INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL,
    acked_ms      INTEGER,
    acked_by      TEXT,
    resolved_ms   INTEGER,
    resolved_by   TEXT,
    merged_into   INTEGER,
    notified_ms   INTEGER,
    escalation    INTEGER NOT NULL DEFAULT 0,
    repeats       INTEGER NOT NULL DEFAULT 0,
    causes_json   TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX incidents_state ON incidents (state, updated_ms);

CREATE TABLE alerts (
    fingerprint      TEXT PRIMARY KEY,
    incident_id      INTEGER,
    source           TEXT NOT NULL,
    status           TEXT NOT NULL,
    name             TEXT NOT NULL,
    severity         TEXT NOT NULL,
    entity_id        TEXT,
    first_seen_ms    INTEGER NOT NULL,
    last_seen_ms     INTEGER NOT NULL,
    received         INTEGER NOT NULL,
    suppressed       TEXT,
    record_json      TEXT NOT NULL
);
CREATE INDEX alerts_incident ON alerts (incident_id);
CREATE INDEX alerts_seen ON alerts (last_seen_ms);

CREATE TABLE incident_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id  INTEGER NOT NULL,
    at_ms        INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    detail_json  TEXT NOT NULL
);
CREATE INDEX incident_events_incident ON incident_events (incident_id, id);

CREATE TABLE silences (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    matchers_json TEXT NOT NULL,
    entity_id     TEXT,
    starts_ms     INTEGER NOT NULL,
    ends_ms       INTEGER NOT NULL,
    created_by    TEXT NOT NULL,
    comment       TEXT NOT NULL,
    created_ms    INTEGER NOT NULL
);

CREATE TABLE notifications (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id  INTEGER NOT NULL,
    at_ms        INTEGER NOT NULL,
    level        INTEGER NOT NULL,
    channel      TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    detail_json  TEXT NOT NULL
);
CREATE INDEX notifications_incident ON notifications (incident_id);
