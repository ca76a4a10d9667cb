-- The wishlist: items (the whole item as JSON, with its status and category as columns) and
-- the outcomes recorded against their estimates, from which the ROI model learns.
CREATE TABLE wishlist_items (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    status      TEXT NOT NULL,
    category    TEXT NOT NULL,
    item_json   TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE TABLE wishlist_outcomes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id     INTEGER NOT NULL REFERENCES wishlist_items(id),
    category    TEXT NOT NULL,
    factor      TEXT NOT NULL,
    estimated   REAL NOT NULL,
    predicted   REAL NOT NULL,
    actual      REAL NOT NULL,
    at_ms       INTEGER NOT NULL
);
CREATE INDEX wishlist_outcomes_at ON wishlist_outcomes (at_ms);
