-- Discovery: where each workload is reached. One row per address; a row
-- lives as long as the SVID (`serial`) that registered it, and a revoked
-- SVID's rows are ignored. `ports` is a comma-separated list ('' = every
-- port). `endpoint_changes.seq` moves with every registration, so the
-- watch's mark changes even when the number of rows does not.
CREATE TABLE endpoints (
    address TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, instance TEXT NOT NULL,
    serial TEXT NOT NULL, ports TEXT NOT NULL, expires_at INTEGER NOT NULL,
    registered_at INTEGER NOT NULL);
CREATE INDEX endpoints_by_owner ON endpoints (spiffe_id, instance);
CREATE TABLE endpoint_changes (
    id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
INSERT INTO endpoint_changes (id, seq) VALUES (1, 0);
-- New tables only: control planes at version 1 or 2 run on this schema.
INSERT INTO warden_schema_compat (version, oldest_compatible) VALUES (3, 1);
