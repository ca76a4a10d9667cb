-- Change records: the professional workflow every change to the lab goes through. The change
-- row holds where it stands; `change_transitions` holds how it got there (the audit trail).
CREATE TABLE changes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    title         TEXT NOT NULL,
    -- proposed, analysed, awaiting_approval, approved, rejected, executing, validating,
    -- documenting, committed, closed, failed, rolled_back
    state         TEXT NOT NULL,
    -- The forge's issue number: the N of `fixes #N`.
    issue         INTEGER,
    workflow      TEXT NOT NULL,
    -- The plan as shown to the approver, and its digest.
    plan_json     TEXT NOT NULL,
    plan_digest   TEXT NOT NULL,
    -- The digest a human approved; NULL until then, and again when the plan changes.
    approved_plan TEXT,
    -- What was proposed: parameters, analysis, ROI, documentation area.
    proposal_json TEXT NOT NULL,
    -- The run that executes it, once approved.
    run_id        INTEGER REFERENCES runs (id),
    -- What validation found, and the commit that closed its issue.
    outcome_json  TEXT,
    commit_sha    TEXT,
    created_by    TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL
);
CREATE INDEX changes_state ON changes (state);

CREATE TABLE change_transitions (
    change_id  INTEGER NOT NULL REFERENCES changes (id),
    seq        INTEGER NOT NULL,
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    actor_json TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    PRIMARY KEY (change_id, seq)
);

-- A run that changes the lab belongs to a change; the engine refuses its mutating steps unless
-- that change is approved for exactly the run's plan.
ALTER TABLE runs ADD COLUMN change_id INTEGER REFERENCES changes (id);

-- The embedded forge: issues numbered here and mirrored as markdown in the GitOps repository.
CREATE TABLE forge_issues (
    number     INTEGER PRIMARY KEY AUTOINCREMENT,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    -- open, closed
    state      TEXT NOT NULL,
    labels     TEXT NOT NULL DEFAULT '[]',
    created_ms INTEGER NOT NULL,
    closed_ms  INTEGER,
    -- The commit whose message closed it (`fixes #N`).
    closed_by  TEXT
);

CREATE TABLE forge_comments (
    issue  INTEGER NOT NULL REFERENCES forge_issues (number),
    seq    INTEGER NOT NULL,
    at_ms  INTEGER NOT NULL,
    author TEXT NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (issue, seq)
);
