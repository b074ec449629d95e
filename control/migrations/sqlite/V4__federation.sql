-- Federation: the last good SPIFFE bundle fetched from each federated trust
-- domain's bundle endpoint, kept across restarts and shared by replicas.
-- `bundle` is the document as fetched (SPIFFE bundle format); `sequence`
-- its spiffe_sequence; `changed_at` moves only when the bundle does, so
-- the watch's mark follows changes, not refreshes.
CREATE TABLE federated_bundles (
    trust_domain TEXT PRIMARY KEY, endpoint_url TEXT NOT NULL,
    bundle TEXT NOT NULL, sequence INTEGER NOT NULL, digest TEXT NOT NULL,
    refreshed_at INTEGER NOT NULL, changed_at INTEGER NOT NULL);
-- New tables only: control planes at version 1 to 3 run on this schema.
INSERT INTO warden_schema_compat (version, oldest_compatible) VALUES (4, 1);
