-- The audit log shipped by every replica (src/audit/ship.rs).
--
-- Each replica keeps its hash-chained, signed files and ships them here:
-- one stream per audit directory, rows idempotent by (stream, seq).
-- `line` is the record exactly as the writer wrote it (the bytes its hash
-- covers; `costguard audit verify --shipped` recomputes the hash from it);
-- `record` is the same record as jsonb for the query filters (with any NUL
-- character replaced, which jsonb cannot hold); the other columns are
-- copies of its fields for the indexes.
CREATE TABLE audit_records (
    stream     text        NOT NULL,
    seq        bigint      NOT NULL,
    at         timestamptz NOT NULL,
    event_type text        NOT NULL,
    tenant_id  text        NOT NULL,
    record     jsonb       NOT NULL,
    line       text        NOT NULL,
    hash       text        NOT NULL,
    PRIMARY KEY (stream, seq)
);

-- GET /admin/v1/audit pages in (at, stream, seq) order, per tenant or for
-- all; the report counts one tenant's records since a time.
CREATE INDEX audit_records_tenant_at ON audit_records (tenant_id, at, stream, seq);
CREATE INDEX audit_records_at ON audit_records (at, stream, seq);

-- Each stream's anchored head: the writer's signed head (audit.head),
-- written only in the transaction that commits the records up to it, so
-- it never names a record that is not here.
CREATE TABLE audit_streams (
    stream         text        PRIMARY KEY,
    head_seq       bigint      NOT NULL,
    head_hash      text        NOT NULL,
    -- The head's file name: part of the message its HMAC signs.
    head_file      text        NOT NULL,
    head_signature text        NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Records local retention removed before they were shipped (a long
-- database outage): the stream continues at `before_seq`, and the
-- retention anchor (audit.anchor, signed with the same key) says the
-- chain up to `anchor_seq` = before_seq - 1 ended with `anchor_hash`.
CREATE TABLE audit_gaps (
    stream           text   NOT NULL,
    before_seq       bigint NOT NULL,
    anchor_file      text   NOT NULL,
    anchor_seq       bigint NOT NULL,
    anchor_hash      text   NOT NULL,
    anchor_signature text   NOT NULL,
    PRIMARY KEY (stream, before_seq)
);
