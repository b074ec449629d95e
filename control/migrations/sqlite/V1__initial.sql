-- Warden's schema before versioned migrations (0.1.0). IF NOT EXISTS: a
-- database created by 0.1.0 already has these tables, and adopting it
-- records this step as applied without touching them.
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY, token_id TEXT NOT NULL, spiffe_id TEXT NOT NULL,
    labels TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    used_at INTEGER);
CREATE TABLE IF NOT EXISTS identities (
    spiffe_id TEXT PRIMARY KEY, labels TEXT NOT NULL, created_at INTEGER NOT NULL,
    revoked_at INTEGER, revoke_reason TEXT);
CREATE TABLE IF NOT EXISTS svids (
    serial TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, key_sha256 TEXT NOT NULL,
    issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, kind TEXT NOT NULL,
    instance TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS svids_by_id ON svids (spiffe_id, issued_at);
CREATE TABLE IF NOT EXISTS revocations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, spiffe_id TEXT,
    serial TEXT, expires_at INTEGER, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policies (
    version INTEGER PRIMARY KEY AUTOINCREMENT, created_at INTEGER NOT NULL,
    digest TEXT NOT NULL, files TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policy_head (
    id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, event TEXT NOT NULL,
    outcome TEXT NOT NULL, spiffe_id TEXT, serial TEXT, reason TEXT,
    detail TEXT NOT NULL, actor TEXT NOT NULL);
