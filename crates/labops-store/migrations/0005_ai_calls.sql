-- Every call to a model: where it went and why, what was redacted, what it cost, how it ended.
-- The spend budget is summed from it; `labops ai usage` summarises it.
CREATE TABLE ai_calls (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms         INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    task          TEXT,
    route         TEXT NOT NULL,
    provider      TEXT NOT NULL,
    privacy       TEXT NOT NULL,
    purpose       TEXT NOT NULL,
    redactions    INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd      REAL NOT NULL,
    latency_ms    INTEGER NOT NULL,
    outcome       TEXT NOT NULL,
    detail_json   TEXT NOT NULL
);
CREATE INDEX ai_calls_at ON ai_calls (at_ms);
