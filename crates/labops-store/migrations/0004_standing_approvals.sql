-- Standing approvals: a human's approval recorded in advance for one workflow, on matching
-- targets, within a blast radius, a number of uses and an expiry. Each change approved under
-- one names it in its history.
CREATE TABLE standing_approvals (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    approver         TEXT NOT NULL,
    reason           TEXT NOT NULL,
    workflow         TEXT NOT NULL,
    targets_json     TEXT NOT NULL,
    max_blast_radius INTEGER NOT NULL,
    max_uses         INTEGER,
    uses             INTEGER NOT NULL DEFAULT 0,
    expires_ms       INTEGER NOT NULL,
    created_ms       INTEGER NOT NULL,
    revoked_by       TEXT
);
