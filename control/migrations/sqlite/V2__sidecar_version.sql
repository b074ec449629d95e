-- Which control planes may run on this schema. Each migration adds its row:
-- a control plane that knows migrations up to K runs on a database at
-- version D > K only if every row with version > K has oldest_compatible
-- <= K (the step only added what older code ignores: a nullable column, a
-- table). Otherwise it refuses to start and names both versions.
CREATE TABLE warden_schema_compat (
    version INTEGER PRIMARY KEY, oldest_compatible INTEGER NOT NULL);
INSERT INTO warden_schema_compat (version, oldest_compatible) VALUES (1, 1), (2, 1);

-- The version a sidecar reported (its Warden-Version header) when it was
-- issued an SVID; NULL for SVIDs issued before 0.2.0 recorded it.
ALTER TABLE svids ADD COLUMN sidecar_version TEXT;
