-- The last good snapshot of each inventory source, so a restart serves known data at once
-- (marked with its age) while the sources are fetched again.
CREATE TABLE source_snapshots (
    source      TEXT PRIMARY KEY NOT NULL,
    endpoint    TEXT NOT NULL,
    taken_ms    INTEGER NOT NULL,
    part_json   TEXT NOT NULL
);

-- Every action taken through any interface: who, what, on what, and how it ended.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT,
    outcome     TEXT NOT NULL,
    detail_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at_ms);
