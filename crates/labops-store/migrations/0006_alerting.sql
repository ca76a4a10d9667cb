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
    causes_json   TEXT NOT NULL DEFAULT '[]',
    quiet         TEXT
);
CREATE INDEX incidents_state ON incidents (state);

-- Repeats of an incident's alerts, counted in tiny rows of their own (see alert_seen).
CREATE TABLE incident_seen (
    id            INTEGER PRIMARY KEY,
    seen_ms       INTEGER NOT NULL,
    repeats       INTEGER NOT NULL
) WITHOUT ROWID;

-- What a repeat updates lives in tiny rows of its own (alert_seen: a storm of repeats rewrites
-- few pages of the WAL); the alert's columns for queries in alerts; the alert itself (labels,
-- annotations, what the desk worked out) in alert_records.
CREATE TABLE alerts (
    fingerprint      TEXT PRIMARY KEY,
    incident_id      INTEGER,
    source           TEXT NOT NULL,
    status           TEXT NOT NULL,
    name             TEXT NOT NULL,
    severity         TEXT NOT NULL,
    entity_id        TEXT,
    first_seen_ms    INTEGER NOT NULL,
    suppressed       TEXT
) WITHOUT ROWID;

CREATE TABLE alert_seen (
    fingerprint      TEXT PRIMARY KEY,
    last_seen_ms     INTEGER NOT NULL,
    received         INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX alerts_incident ON alerts (incident_id);

CREATE TABLE alert_records (
    fingerprint      TEXT PRIMARY KEY,
    record_json      TEXT NOT NULL
) WITHOUT ROWID;

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
