-- Least privilege from observed use: what each sidecar's callers used, as
-- the sidecars report it (POST /v1/usage), summed per day so a window
-- (--since) and the retention (--usage-retention) cut on whole days.
-- `caller` is a SPIFFE ID or unauthenticated:<kind>; `callee` the SPIFFE
-- ID of the reporting sidecar (its own, from mTLS); `policies` the
-- deciding policy ids, sorted, comma-joined.
CREATE TABLE usage_daily (
    day INTEGER NOT NULL, callee TEXT NOT NULL, service TEXT NOT NULL,
    caller TEXT NOT NULL, action TEXT NOT NULL, route TEXT NOT NULL,
    decision TEXT NOT NULL, policies TEXT NOT NULL,
    count INTEGER NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    PRIMARY KEY (day, callee, caller, action, route, decision, policies));
CREATE INDEX usage_daily_caller ON usage_daily (caller, last_seen);
CREATE INDEX usage_daily_callee ON usage_daily (callee, last_seen);
-- Edges: a caller calling a callee (kind 'call', value ''), and a caller
-- calling it from a source range (kind 'source', value the range). The
-- first report of one is audited as new.
CREATE TABLE access_edges (
    caller TEXT NOT NULL, callee TEXT NOT NULL, kind TEXT NOT NULL,
    value TEXT NOT NULL, service TEXT NOT NULL,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
    PRIMARY KEY (caller, callee, kind, value));
CREATE INDEX access_edges_first_seen ON access_edges (first_seen);
-- New tables only: control planes at version 1 to 4 run on this schema.
INSERT INTO warden_schema_compat (version, oldest_compatible) VALUES (5, 1);
