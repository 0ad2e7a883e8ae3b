-- Keys every replica must share (the login-cookie key, the audit HMAC key)
-- when the operator did not mount one file into every pod: created once by
-- whichever replica starts first, read by all.
CREATE TABLE shared_keys (
    name text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
