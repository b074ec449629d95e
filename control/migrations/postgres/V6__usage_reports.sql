-- Usage reports stored once: each sidecar process numbers its reports
-- (`instance`, random per start; `seq`, from 1) and sends one again, with
-- the same number, when it did not get the answer. A report numbered at or
-- below the stored `seq` of its (callee, instance) was stored already and is
-- not added again. One row per sidecar process, about 4,096 per callee at
-- most (the least recently updated go first); rows not updated for the usage
-- retention are deleted with the usage.
CREATE TABLE usage_reporters (
    callee TEXT NOT NULL, instance TEXT NOT NULL,
    seq BIGINT NOT NULL, updated BIGINT NOT NULL,
    PRIMARY KEY (callee, instance));
CREATE INDEX usage_reporters_callee_updated ON usage_reporters (callee, updated);
-- New tables only: control planes at version 1 to 5 run on this schema.
INSERT INTO warden_schema_compat (version, oldest_compatible) VALUES (6, 1);
