//! The embedded store: one sled database, one tree per kind of record,
//! JSON values. Multi-step writes (limit checks, cascades, hash re-indexing)
//! run under one write lock, and every write is flushed before it returns.
//! No sled type leaves this module.

use std::path::Path;
use std::sync::Mutex;

use ::sled::transaction::{ConflictableTransactionError, TransactionError};
use ::sled::{Db, Transactional, Tree};
use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    AUDIT_SCAN_LIMIT, AuditPage, AuditPointer, AuditQuery, Removed, Store, StoreError, UsageKey,
};
use crate::audit::{Record, Severity};
use crate::model::{ApiKey, CustomRole, Project, Tenant, User};

/// sled-backed [`Store`].
#[derive(Debug)]
pub struct SledStore {
    db: Db,
    tenants: Tree,
    /// `tenant/key_id` → key.
    keys: Tree,
    /// SHA-256 hex → `tenant/key_id`, for the current and (during a
    /// rotation grace period) the previous secret of each key.
    key_hashes: Tree,
    /// `tenant/project` → project.
    projects: Tree,
    /// `tenant/user` → user.
    users: Tree,
    /// `tenant/name` → custom role.
    roles: Tree,
    /// `tenant/day` → request count (u64 big-endian).
    usage: Tree,
    /// Audit index bookkeeping (`indexed_seq`).
    audit: Tree,
    /// time key + seq → pointer (file, offset, length, filter fields):
    /// every record, by time.
    audit_by_time: Tree,
    /// tenant + 0 + time key + seq → the same pointer: a tenant's records
    /// by time.
    audit_by_tenant: Tree,
    /// Serializes read-check-write sequences (limits, cascades). Held only
    /// around synchronous sled calls, never across an await.
    write_lock: Mutex<()>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(backend)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(backend)
}

fn scoped(tenant_id: &str, id: &str) -> Vec<u8> {
    format!("{tenant_id}/{id}").into_bytes()
}

/// A stored big-endian counter; absent or malformed reads as 0.
fn counter(bytes: Option<&[u8]>) -> u64 {
    bytes
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// Unix microseconds as 8 bytes that sort like the numbers, then the seq.
fn time_key(micros: i64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&((micros as u64) ^ (1 << 63)).to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn from_time_key(k: &[u8]) -> Option<(i64, u64)> {
    let t = u64::from_be_bytes(k.get(..8)?.try_into().ok()?) ^ (1 << 63);
    let seq = u64::from_be_bytes(k.get(8..16)?.try_into().ok()?);
    Some((t as i64, seq))
}

fn tenant_key(tenant: &str, micros: i64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 17);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(&time_key(micros, seq));
    k
}

/// The index value: where the record is and what queries filter on.
fn encode_pointer(p: &AuditPointer) -> Vec<u8> {
    let mut v = Vec::with_capacity(32 + p.tenant_id.len() + p.user_id.len() + p.event_type.len());
    v.extend_from_slice(&p.file_no.to_be_bytes());
    v.extend_from_slice(&p.offset.to_be_bytes());
    v.extend_from_slice(&p.len.to_be_bytes());
    v.push(match p.severity {
        Severity::High => 2,
        Severity::Medium => 1,
        Severity::Low => 0,
    });
    for s in [&p.tenant_id, &p.user_id, &p.event_type] {
        let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
        v.extend_from_slice(&(b.len() as u16).to_be_bytes());
        v.extend_from_slice(b);
    }
    v
}

fn decode_pointer(micros: i64, seq: u64, v: &[u8]) -> Option<AuditPointer> {
    let u64_at = |i: usize| Some(u64::from_be_bytes(v.get(i..i + 8)?.try_into().ok()?));
    let file_no = u64_at(0)?;
    let offset = u64_at(8)?;
    let len = u32::from_be_bytes(v.get(16..20)?.try_into().ok()?);
    let severity = match v.get(20)? {
        2 => Severity::High,
        1 => Severity::Medium,
        _ => Severity::Low,
    };
    let mut at = 21;
    let mut text = || {
        let n = u16::from_be_bytes(v.get(at..at + 2)?.try_into().ok()?) as usize;
        let s = String::from_utf8_lossy(v.get(at + 2..at + 2 + n)?).into_owned();
        at += 2 + n;
        Some(s)
    };
    let (tenant_id, user_id, event_type) = (text()?, text()?, text()?);
    Some(AuditPointer {
        seq,
        micros,
        file_no,
        offset,
        len,
        severity,
        tenant_id,
        user_id,
        event_type,
    })
}

/// A record's time as Unix microseconds.
pub fn record_micros(record: &Record) -> i64 {
    time::OffsetDateTime::parse(
        &record.timestamp,
        &time::format_description::well_known::Rfc3339,
    )
    .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
    .unwrap_or(0)
}

fn prefix(tenant_id: &str) -> Vec<u8> {
    format!("{tenant_id}/").into_bytes()
}

fn tx_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    }
}

/// The page cache unless configured: 64 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

impl SledStore {
    /// Opens (creating if needed) the store in `path` with the default
    /// page cache ([`DEFAULT_CACHE_BYTES`]). Fails if another process has it open.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens the store with a page cache of at most `cache_bytes` (sled's
    /// own default is 1 GiB, too much for a sidecar).
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<Self, StoreError> {
        let db = ::sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(backend)?;
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        Ok(Self {
            tenants: tree("tenants")?,
            keys: tree("keys")?,
            key_hashes: tree("key_hashes")?,
            projects: tree("projects")?,
            users: tree("users")?,
            roles: tree("roles")?,
            usage: tree("usage")?,
            audit: tree("audit")?,
            audit_by_time: tree("audit_by_time")?,
            audit_by_tenant: tree("audit_by_tenant")?,
            db,
            write_lock: Mutex::new(()),
        })
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(backend)
    }

    /// Writes many keys at once (restores, benchmarks), replacing keys with
    /// the same id, with one flush at the end. No limit or duplicate checks.
    pub async fn import_keys(&self, keys: &[ApiKey]) -> Result<(), StoreError> {
        let mut records = ::sled::Batch::default();
        let mut hashes = ::sled::Batch::default();
        for key in keys {
            let id = scoped(&key.tenant_id, &key.key_id);
            records.insert(id.as_slice(), encode(key)?);
            for hash in std::iter::once(&key.hash).chain(key.previous_hash.as_ref()) {
                hashes.insert(hash.as_bytes(), id.as_slice());
            }
        }
        {
            let _guard = self.lock();
            self.keys.apply_batch(records).map_err(backend)?;
            self.key_hashes.apply_batch(hashes).map_err(backend)?;
        }
        self.durable().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves sled consistent (each step
        // is a single sled operation or a transaction), so poisoning is moot.
        self.write_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn durable(&self) -> Result<(), StoreError> {
        self.db.flush_async().await.map(drop).map_err(backend)
    }

    fn scan<T: DeserializeOwned>(tree: &Tree, tenant_id: &str) -> Result<Vec<T>, StoreError> {
        tree.scan_prefix(prefix(tenant_id))
            .values()
            .map(|v| decode(&v.map_err(backend)?))
            .collect()
    }

    fn count(tree: &Tree, tenant_id: &str) -> u64 {
        tree.scan_prefix(prefix(tenant_id)).keys().count() as u64
    }
}

#[async_trait]
impl Store for SledStore {
    async fn check(&self) -> Result<(), StoreError> {
        self.tenants.first().map(drop).map_err(backend)
    }

    async fn insert_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let value = encode(tenant)?;
        self.tenants
            .compare_and_swap(tenant.tenant_id.as_bytes(), None::<&[u8]>, Some(value))
            .map_err(backend)?
            .map_err(|_| StoreError::AlreadyExists("tenant"))?;
        self.durable().await
    }

    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<Tenant>, StoreError> {
        self.tenants
            .get(tenant_id.as_bytes())
            .map_err(backend)?
            .map(|v| decode(&v))
            .transpose()
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.tenants
            .iter()
            .values()
            .map(|v| decode(&v.map_err(backend)?))
            .collect()
    }

    async fn update_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        {
            let _guard = self.lock();
            if !self
                .tenants
                .contains_key(tenant.tenant_id.as_bytes())
                .map_err(backend)?
            {
                return Err(StoreError::NotFound("tenant"));
            }
            self.tenants
                .insert(tenant.tenant_id.as_bytes(), encode(tenant)?)
                .map_err(backend)?;
        }
        self.durable().await
    }

    async fn delete_tenant(&self, tenant_id: &str) -> Result<Removed, StoreError> {
        let mut removed = Removed::default();
        {
            let _guard = self.lock();
            // The tenant goes first: from then on its keys no longer
            // authenticate, even if a crash interrupts the cascade.
            if self
                .tenants
                .remove(tenant_id.as_bytes())
                .map_err(backend)?
                .is_none()
            {
                return Err(StoreError::NotFound("tenant"));
            }
            for item in self.keys.scan_prefix(prefix(tenant_id)) {
                let (id, value) = item.map_err(backend)?;
                let key: ApiKey = decode(&value)?;
                for hash in std::iter::once(&key.hash).chain(key.previous_hash.as_ref()) {
                    self.key_hashes.remove(hash.as_bytes()).map_err(backend)?;
                    removed.key_hashes.push(hash.clone());
                }
                self.keys.remove(id).map_err(backend)?;
            }
            for tree in [&self.projects, &self.users, &self.roles, &self.usage] {
                for k in tree.scan_prefix(prefix(tenant_id)).keys() {
                    tree.remove(k.map_err(backend)?).map_err(backend)?;
                }
            }
        }
        self.durable().await?;
        Ok(removed)
    }

    async fn insert_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let value = encode(key)?;
        let id = scoped(&key.tenant_id, &key.key_id);
        (&self.keys, &self.key_hashes)
            .transaction(|(keys, hashes)| {
                if keys.get(id.as_slice())?.is_some() {
                    return Err(ConflictableTransactionError::Abort(
                        StoreError::AlreadyExists("key"),
                    ));
                }
                keys.insert(id.as_slice(), value.as_slice())?;
                hashes.insert(key.hash.as_bytes(), id.as_slice())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.durable().await
    }

    async fn get_key(&self, tenant_id: &str, key_id: &str) -> Result<Option<ApiKey>, StoreError> {
        self.keys
            .get(scoped(tenant_id, key_id))
            .map_err(backend)?
            .map(|v| decode(&v))
            .transpose()
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let Some(key_id) = self.key_hashes.get(hash.as_bytes()).map_err(backend)? else {
            return Ok(None);
        };
        let Some(value) = self.keys.get(&key_id).map_err(backend)? else {
            return Ok(None);
        };
        let key: ApiKey = decode(&value)?;
        let matches = key.hash == hash || key.previous_hash.as_deref() == Some(hash);
        Ok(matches.then_some(key))
    }

    async fn list_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        Self::scan(&self.keys, tenant_id)
    }

    async fn update_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let value = encode(key)?;
        let id = scoped(&key.tenant_id, &key.key_id);
        (&self.keys, &self.key_hashes)
            .transaction(|(keys, hashes)| {
                let Some(old) = keys.get(id.as_slice())? else {
                    return Err(ConflictableTransactionError::Abort(StoreError::NotFound(
                        "key",
                    )));
                };
                let old: ApiKey = serde_json::from_slice(&old)
                    .map_err(|e| ConflictableTransactionError::Abort(backend(e)))?;
                let new_hashes = [Some(&key.hash), key.previous_hash.as_ref()];
                for hash in std::iter::once(&old.hash).chain(old.previous_hash.as_ref()) {
                    if !new_hashes.contains(&Some(hash)) {
                        hashes.remove(hash.as_bytes())?;
                    }
                }
                for hash in new_hashes.into_iter().flatten() {
                    hashes.insert(hash.as_bytes(), id.as_slice())?;
                }
                keys.insert(id.as_slice(), value.as_slice())?;
                Ok(())
            })
            .map_err(tx_error)?;
        self.durable().await
    }

    async fn insert_project(&self, project: &Project, max: i64) -> Result<(), StoreError> {
        {
            let _guard = self.lock();
            if max >= 0 && Self::count(&self.projects, &project.tenant_id) >= max as u64 {
                return Err(StoreError::LimitReached {
                    what: "project",
                    max,
                });
            }
            let key = scoped(&project.tenant_id, &project.project_id);
            self.projects
                .compare_and_swap(key, None::<&[u8]>, Some(encode(project)?))
                .map_err(backend)?
                .map_err(|_| StoreError::AlreadyExists("project"))?;
        }
        self.durable().await
    }

    async fn list_projects(&self, tenant_id: &str) -> Result<Vec<Project>, StoreError> {
        Self::scan(&self.projects, tenant_id)
    }

    async fn get_project(
        &self,
        tenant_id: &str,
        project_id: &str,
    ) -> Result<Option<Project>, StoreError> {
        self.projects
            .get(scoped(tenant_id, project_id))
            .map_err(backend)?
            .map(|v| decode(&v))
            .transpose()
    }

    async fn put_user(&self, user: &User, max: i64) -> Result<bool, StoreError> {
        let created;
        {
            let _guard = self.lock();
            let key = scoped(&user.tenant_id, &user.user_id);
            created = !self.users.contains_key(&key).map_err(backend)?;
            if created && max >= 0 && Self::count(&self.users, &user.tenant_id) >= max as u64 {
                return Err(StoreError::LimitReached { what: "user", max });
            }
            self.users.insert(key, encode(user)?).map_err(backend)?;
        }
        self.durable().await?;
        Ok(created)
    }

    async fn list_users(&self, tenant_id: &str) -> Result<Vec<User>, StoreError> {
        Self::scan(&self.users, tenant_id)
    }

    async fn delete_user(&self, tenant_id: &str, user_id: &str) -> Result<bool, StoreError> {
        let existed = self
            .users
            .remove(scoped(tenant_id, user_id))
            .map_err(backend)?
            .is_some();
        self.durable().await?;
        Ok(existed)
    }

    async fn put_role(&self, role: &CustomRole) -> Result<bool, StoreError> {
        let created = self
            .roles
            .insert(scoped(&role.tenant_id, &role.name), encode(role)?)
            .map_err(backend)?
            .is_none();
        self.durable().await?;
        Ok(created)
    }

    async fn list_roles(&self, tenant_id: &str) -> Result<Vec<CustomRole>, StoreError> {
        Self::scan(&self.roles, tenant_id)
    }

    async fn delete_role(&self, tenant_id: &str, name: &str) -> Result<bool, StoreError> {
        let existed = self
            .roles
            .remove(scoped(tenant_id, name))
            .map_err(backend)?
            .is_some();
        self.durable().await?;
        Ok(existed)
    }

    async fn add_usage(&self, batch: &[(UsageKey, u64)]) -> Result<(), StoreError> {
        // One transaction: a failed batch adds nothing, so the caller can
        // retry all of it without counting anything twice.
        let keys: Vec<(Vec<u8>, u64)> = batch
            .iter()
            .map(|(key, n)| (scoped(&key.tenant_id, &key.name()), *n))
            .collect();
        self.usage
            .transaction(|tx| {
                for (key, n) in &keys {
                    let old = counter(tx.get(key.as_slice())?.as_deref());
                    tx.insert(key.as_slice(), &old.saturating_add(*n).to_be_bytes())?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_error)?;
        self.durable().await
    }

    async fn usage(&self, key: &UsageKey) -> Result<u64, StoreError> {
        Ok(counter(
            self.usage
                .get(scoped(&key.tenant_id, &key.name()))
                .map_err(backend)?
                .as_deref(),
        ))
    }

    async fn index_audit(&self, entries: &[AuditPointer]) -> Result<(), StoreError> {
        let mut by_time = ::sled::Batch::default();
        let mut by_tenant = ::sled::Batch::default();
        let mut max = 0;
        for p in entries {
            let value = encode_pointer(p);
            if !p.tenant_id.is_empty() {
                by_tenant.insert(tenant_key(&p.tenant_id, p.micros, p.seq), value.clone());
            }
            by_time.insert(&time_key(p.micros, p.seq), value);
            max = max.max(p.seq);
        }
        self.audit_by_time.apply_batch(by_time).map_err(backend)?;
        self.audit_by_tenant
            .apply_batch(by_tenant)
            .map_err(backend)?;
        self.audit
            .fetch_and_update(b"indexed_seq", |old| {
                Some(counter(old).max(max).to_be_bytes().to_vec())
            })
            .map_err(backend)?;
        Ok(())
    }

    async fn audit_indexed_seq(&self) -> Result<u64, StoreError> {
        Ok(counter(
            self.audit.get(b"indexed_seq").map_err(backend)?.as_deref(),
        ))
    }

    async fn query_audit(&self, q: &AuditQuery) -> Result<AuditPage, StoreError> {
        let start = q.start_micros.unwrap_or(i64::MIN);
        let end = q.end_micros.unwrap_or(i64::MAX);
        let (tree, prefix) = match &q.tenant_id {
            Some(t) => (&self.audit_by_tenant, {
                let mut p = t.as_bytes().to_vec();
                p.push(0);
                p
            }),
            None => (&self.audit_by_time, Vec::new()),
        };
        if start > end {
            return Ok(AuditPage::default());
        }
        let mut from = prefix.clone();
        match q.after {
            Some((t, seq)) if t >= start => {
                from.extend_from_slice(&time_key(t, seq.saturating_add(1)))
            }
            _ => from.extend_from_slice(&time_key(start, 0)),
        }
        let mut to = prefix.clone();
        to.extend_from_slice(&time_key(end, u64::MAX));
        if from > to {
            return Ok(AuditPage::default());
        }
        let mut page = AuditPage::default();
        let mut last_scanned = None;
        for (scanned, entry) in tree.range(from..=to).enumerate() {
            if page.entries.len() >= q.limit || scanned >= AUDIT_SCAN_LIMIT {
                page.next = last_scanned;
                return Ok(page);
            }
            let (k, v) = entry.map_err(backend)?;
            let Some((micros, seq)) = from_time_key(&k[prefix.len()..]) else {
                continue;
            };
            last_scanned = Some((micros, seq));
            let Some(entry) = decode_pointer(micros, seq, &v) else {
                continue;
            };
            if q.user_id.as_ref().is_some_and(|u| *u != entry.user_id)
                || q.event_type
                    .as_ref()
                    .is_some_and(|e| *e != entry.event_type)
            {
                continue;
            }
            page.entries.push(entry);
        }
        Ok(page)
    }

    async fn purge_audit(&self, tenant_id: &str, before_micros: i64) -> Result<u64, StoreError> {
        let from = tenant_key(tenant_id, i64::MIN, 0);
        let to = tenant_key(tenant_id, before_micros, 0);
        let mut removed = 0;
        for entry in self.audit_by_tenant.range(from..to) {
            let (k, _) = entry.map_err(backend)?;
            let Some((micros, seq)) = from_time_key(&k[tenant_id.len() + 1..]) else {
                continue;
            };
            self.audit_by_tenant.remove(&k).map_err(backend)?;
            self.audit_by_time
                .remove(time_key(micros, seq))
                .map_err(backend)?;
            removed += 1;
        }
        if removed > 0 {
            self.durable().await?;
        }
        Ok(removed)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.durable().await
    }
}

#[cfg(test)]
mod audit_index_tests {
    use super::*;
    use crate::audit::Severity;

    fn record(seq: u64, tenant: &str, event_type: &str) -> AuditPointer {
        AuditPointer {
            seq,
            micros: 1_800_000_000_000_000 + seq as i64,
            file_no: 1,
            offset: seq * 100,
            len: 99,
            severity: Severity::Low,
            tenant_id: tenant.into(),
            user_id: format!("u{}", seq % 2),
            event_type: event_type.into(),
        }
    }

    #[tokio::test]
    async fn index_query_page_purge() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let records: Vec<AuditPointer> = (1..=20)
            .map(|i| {
                record(
                    i,
                    if i % 2 == 0 { "org-a" } else { "org-b" },
                    if i % 5 == 0 { "x" } else { "y" },
                )
            })
            .collect();
        store.index_audit(&records).await.unwrap();
        assert_eq!(store.audit_indexed_seq().await.unwrap(), 20);
        let q = |tenant: Option<&str>, event: Option<&str>, limit, after| AuditQuery {
            tenant_id: tenant.map(Into::into),
            event_type: event.map(Into::into),
            limit,
            after,
            ..AuditQuery::default()
        };
        let all = store.query_audit(&q(None, None, 100, None)).await.unwrap();
        assert_eq!(all.entries.len(), 20);
        assert!(all.next.is_none());
        let a = store
            .query_audit(&q(Some("org-a"), None, 100, None))
            .await
            .unwrap();
        assert_eq!(
            a.entries.iter().map(|r| r.seq).collect::<Vec<_>>(),
            (1..=10).map(|i| i * 2).collect::<Vec<_>>()
        );
        let x = store
            .query_audit(&q(Some("org-a"), Some("x"), 100, None))
            .await
            .unwrap();
        assert_eq!(
            x.entries.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [10, 20]
        );
        let p1 = store
            .query_audit(&q(Some("org-a"), None, 3, None))
            .await
            .unwrap();
        assert_eq!(p1.entries.len(), 3);
        let p2 = store
            .query_audit(&q(Some("org-a"), None, 3, p1.next))
            .await
            .unwrap();
        assert_eq!(p2.entries[0].seq, 8);
        let before = record(11, "", "").micros;
        assert_eq!(store.purge_audit("org-a", before).await.unwrap(), 5);
        let a = store
            .query_audit(&q(Some("org-a"), None, 100, None))
            .await
            .unwrap();
        assert_eq!(a.entries.len(), 5);
        let all = store.query_audit(&q(None, None, 100, None)).await.unwrap();
        assert_eq!(all.entries.len(), 15);
    }
}
