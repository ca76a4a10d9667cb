-- Workflow runs. Every state change of a run or a step is written here before the action it
-- leads to, so a restarted labops resumes each run where it stopped.
CREATE TABLE runs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow         TEXT NOT NULL,
    plan_json        TEXT NOT NULL,
    -- awaiting_approval, running, rolling_back, succeeded, failed, rolled_back, cancelled
    state            TEXT NOT NULL,
    needs_approval   INTEGER NOT NULL,
    approved_by      TEXT,
    approved_ms      INTEGER,
    cancel_requested TEXT,
    -- The process driving the run (`pid:PID:NONCE`) and its last heartbeat; NULL when none.
    owner            TEXT,
    heartbeat_ms     INTEGER,
    created_by       TEXT NOT NULL,
    created_ms       INTEGER NOT NULL,
    updated_ms       INTEGER NOT NULL,
    -- The seq of the run's last event.
    last_seq         INTEGER NOT NULL DEFAULT 0,
    report_json      TEXT
);
CREATE INDEX runs_state ON runs (state);

CREATE TABLE run_steps (
    run_id       INTEGER NOT NULL REFERENCES runs (id),
    name         TEXT NOT NULL,
    position     INTEGER NOT NULL,
    -- pending, running, waiting_human, awaiting_confirmation, succeeded, failed, skipped,
    -- cancelled, compensating, compensated, compensation_failed
    state        TEXT NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 0,
    idem_key     TEXT,
    intent_json  TEXT,
    outcome_json TEXT,
    error        TEXT,
    -- Order in which steps completed: compensations run in the reverse of it.
    done_seq     INTEGER,
    started_ms   INTEGER,
    finished_ms  INTEGER,
    PRIMARY KEY (run_id, name)
);

-- The typed progress stream of each run, read by SSE, MCP progress and `--follow`.
CREATE TABLE run_events (
    run_id      INTEGER NOT NULL REFERENCES runs (id),
    seq         INTEGER NOT NULL,
    at_ms       INTEGER NOT NULL,
    step        TEXT,
    kind        TEXT NOT NULL,
    detail_json TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- An event advances its run: the run's last seq and last change follow it.
CREATE TRIGGER run_events_advance AFTER INSERT ON run_events
BEGIN
    UPDATE runs SET last_seq = NEW.seq, updated_ms = NEW.at_ms WHERE id = NEW.run_id;
END;

-- One lock per target entity: a run holds its entities from start to end, so two runs never
-- change the same VM at once.
CREATE TABLE entity_locks (
    entity   TEXT PRIMARY KEY NOT NULL,
    run_id   INTEGER NOT NULL REFERENCES runs (id),
    taken_ms INTEGER NOT NULL
);
