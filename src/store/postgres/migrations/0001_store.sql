-- costguard's shared store. Records are JSONB documents (the model's own
-- serde form) beside the columns queries need. Ids compare byte-wise
-- (COLLATE "C"), so listings come out in the order sled gives.

CREATE TABLE tenants (
    tenant_id text COLLATE "C" PRIMARY KEY,
    doc jsonb NOT NULL
);

CREATE TABLE api_keys (
    tenant_id text COLLATE "C" NOT NULL,
    key_id text COLLATE "C" NOT NULL,
    doc jsonb NOT NULL,
    PRIMARY KEY (tenant_id, key_id)
);

-- A key's current and (during a rotation's grace period) previous secret
-- hash, re-indexed on every update; the last writer of a hash owns it.
CREATE TABLE key_hashes (
    hash text COLLATE "C" PRIMARY KEY,
    tenant_id text COLLATE "C" NOT NULL,
    key_id text COLLATE "C" NOT NULL
);
CREATE INDEX key_hashes_by_key ON key_hashes (tenant_id, key_id);

CREATE TABLE projects (
    tenant_id text COLLATE "C" NOT NULL,
    project_id text COLLATE "C" NOT NULL,
    doc jsonb NOT NULL,
    PRIMARY KEY (tenant_id, project_id)
);

-- Deleted users stay as tombstones (deleted = true) so single sign-on can
-- refuse them; limits count only the live ones.
CREATE TABLE users (
    tenant_id text COLLATE "C" NOT NULL,
    user_id text COLLATE "C" NOT NULL,
    deleted boolean NOT NULL,
    doc jsonb NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);

CREATE TABLE custom_roles (
    tenant_id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    doc jsonb NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE usage (
    tenant_id text COLLATE "C" NOT NULL,
    name text COLLATE "C" NOT NULL,
    value bigint NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- token_hash is the session's token at creation (put_session); an update
-- does not re-index it, as in the embedded store. Times are unix
-- nanoseconds, exact for the sweep's comparisons.
CREATE TABLE sessions (
    tenant_id text COLLATE "C" NOT NULL,
    session_id text COLLATE "C" NOT NULL,
    token_hash text COLLATE "C" UNIQUE,
    expires_ns bigint NOT NULL,
    last_seen_ns bigint NOT NULL,
    doc jsonb NOT NULL,
    PRIMARY KEY (tenant_id, session_id)
);
CREATE INDEX sessions_by_expiry ON sessions (expires_ns);
CREATE INDEX sessions_by_last_seen ON sessions (last_seen_ns);

-- One-time values (SAML assertion IDs) until a unix second.
CREATE TABLE remembered (
    key text COLLATE "C" PRIMARY KEY,
    until bigint NOT NULL
);

-- Events other replicas' caches must hear about, written in the same
-- transaction as the change they describe (store::Change as JSON).
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    change jsonb NOT NULL
);
CREATE INDEX outbox_by_time ON outbox (at);
