//! The embedded store: one sled database, one tree per kind of record,
//! JSON values. Multi-step writes (limit checks, cascades, hash re-indexing)
//! run under one write lock, and every write is flushed before it returns.
//! No sled type leaves this module.

use std::path::Path;
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use ::sled::transaction::{ConflictableTransactionError, TransactionError};
use ::sled::{Db, Transactional, Tree};
use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Removed, Store, StoreError, UsageKey};
use crate::model::{ApiKey, CustomRole, KeyStatus, Project, Session, Tenant, User, UserStatus};

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
    /// `tenant/session_id` → session.
    sessions: Tree,
    /// Cookie secret SHA-256 hex → `tenant/session_id`.
    session_tokens: Tree,
    /// One-time keys → the unix second (big-endian i64) they may be forgotten.
    once: Tree,
    /// Serializes read-check-write sequences (limits, cascades). Held only
    /// around synchronous sled calls, never across an await.
    write_lock: Mutex<()>,
    /// Writers share it, [`SledStore::export`] takes it alone: sled's
    /// iterators are not snapshots, so a backup briefly stops the writes
    /// (the reads go on) to copy every tree at one point in time.
    gate: RwLock<()>,
}

/// [`SledStore::lock`]'s guards; the write lock is released first.
struct Locked<'a> {
    _write: std::sync::MutexGuard<'a, ()>,
    _gate: RwLockReadGuard<'a, ()>,
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
        // Key hashes, sessions and users: nobody else's to read.
        crate::private_files::restrict_tree(path).map_err(backend)?;
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        Ok(Self {
            tenants: tree("tenants")?,
            keys: tree("keys")?,
            key_hashes: tree("key_hashes")?,
            projects: tree("projects")?,
            users: tree("users")?,
            roles: tree("roles")?,
            usage: tree("usage")?,
            sessions: tree("sessions")?,
            session_tokens: tree("session_tokens")?,
            once: tree("once")?,
            db,
            write_lock: Mutex::new(()),
            gate: RwLock::new(()),
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

    /// The write lock, after the backup gate (shared): every
    /// read-check-write sequence is also a writer the snapshot waits for.
    fn lock(&self) -> Locked<'_> {
        // A panic while holding the lock leaves sled consistent (each step
        // is a single sled operation or a transaction), so poisoning is moot.
        let gate = self.gate();
        let write = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        Locked {
            _write: write,
            _gate: gate,
        }
    }

    /// The backup gate, shared: held by every write for its synchronous
    /// sled calls (never across an await), so [`SledStore::export`], which
    /// takes it exclusively, sees no write half done.
    fn gate(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything written so far, on disk. sled 0.34's `flush_async` can
    /// miss its wake-up when several flushes overlap and hang forever
    /// (spacejam/sled#1308, #1241; seen here in the tests): the blocking
    /// `flush` runs on tokio's blocking pool instead.
    async fn durable(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(backend)?
            .map(drop)
            .map_err(backend)
    }

    fn scan<T: DeserializeOwned>(tree: &Tree, tenant_id: &str) -> Result<Vec<T>, StoreError> {
        tree.scan_prefix(prefix(tenant_id))
            .values()
            .map(|v| decode(&v.map_err(backend)?))
            .collect()
    }

    /// A tenant's users without the deleted ones' tombstones.
    fn live_users(&self, tenant_id: &str) -> Result<Vec<User>, StoreError> {
        let mut users: Vec<User> = Self::scan(&self.users, tenant_id)?;
        users.retain(|u| u.status != UserStatus::Deleted);
        Ok(users)
    }

    fn count(tree: &Tree, tenant_id: &str) -> u64 {
        tree.scan_prefix(prefix(tenant_id)).keys().count() as u64
    }
}

// === backup ===

/// The trees a backup holds, by name, in the order they are written (the
/// index is the tree's number in a raw snapshot). A tree added to
/// [`SledStore`] must be added here too (the export test checks that every
/// tree sled has is listed).
pub const TREES: [&str; 10] = [
    "tenants",
    "keys",
    "key_hashes",
    "projects",
    "users",
    "roles",
    "usage",
    "sessions",
    "session_tokens",
    "once",
];

/// One record of a store export: a tree, a key and a value, both hex (the
/// usage counters and one-time keys hold binary values).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ExportLine {
    /// The tree's name (one of [`TREES`]).
    pub tree: String,
    /// The key, hex.
    pub key: String,
    /// The value, hex.
    pub value: String,
}

/// What a snapshot copied.
#[derive(Debug, Clone, Default)]
pub struct Exported {
    /// Records per tree (every tree of [`TREES`], zeros included).
    pub records: std::collections::BTreeMap<String, u64>,
    /// How long the gate was held (what a write could wait at most).
    pub writes_paused: std::time::Duration,
}

impl SledStore {
    fn tree(&self, name: &str) -> Option<&Tree> {
        Some(match name {
            "tenants" => &self.tenants,
            "keys" => &self.keys,
            "key_hashes" => &self.key_hashes,
            "projects" => &self.projects,
            "users" => &self.users,
            "roles" => &self.roles,
            "usage" => &self.usage,
            "sessions" => &self.sessions,
            "session_tokens" => &self.session_tokens,
            "once" => &self.once,
            _ => return None,
        })
    }

    /// Copies every record of every tree to `raw` (a private binary form:
    /// tree index, key and value with their lengths; turn it into the
    /// backup's JSON lines with [`SledStore::raw_to_lines`]), all at one
    /// point in time: the backup gate is held exclusively meanwhile, so no
    /// write is half done (a key without its hash index, a session without
    /// its token) and no tree is ahead of another. Reads go on; writes
    /// wait, for as long as this copy takes (records straight into a local
    /// file, no encoding), which the result reports. Blocking: call it off
    /// the async workers.
    pub fn snapshot(&self, raw: &mut dyn std::io::Write) -> Result<Exported, StoreError> {
        let asked = std::time::Instant::now();
        let gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let start = std::time::Instant::now();
        let mut records = std::collections::BTreeMap::new();
        for (index, name) in TREES.iter().enumerate() {
            let tree = self.tree(name).expect("every listed tree exists");
            let mut n = 0u64;
            for item in tree.iter() {
                let (k, v) = item.map_err(backend)?;
                raw.write_all(&[index as u8]).map_err(backend)?;
                for part in [&k[..], &v[..]] {
                    raw.write_all(&(part.len() as u32).to_be_bytes())
                        .map_err(backend)?;
                    raw.write_all(part).map_err(backend)?;
                }
                n += 1;
            }
            records.insert(name.to_string(), n);
        }
        raw.flush().map_err(backend)?;
        drop(gate);
        let paused = start.elapsed();
        tracing::debug!(waited_for_writers = ?(start - asked), paused = ?paused, "Store snapshot taken under the backup gate.");
        Ok(Exported {
            records,
            writes_paused: paused,
        })
    }

    /// Turns a [`SledStore::snapshot`]'s `raw` copy into the backup's JSON
    /// lines ([`ExportLine`]), after the gate is released.
    pub fn raw_to_lines(
        raw: &mut dyn std::io::Read,
        out: &mut dyn std::io::Write,
    ) -> Result<(), StoreError> {
        let mut index = [0u8; 1];
        loop {
            match raw.read_exact(&mut index) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(backend(e)),
            }
            let tree = TREES
                .get(usize::from(index[0]))
                .ok_or_else(|| StoreError::Backend("snapshot: unknown tree".into()))?;
            let mut parts = [Vec::new(), Vec::new()];
            for part in &mut parts {
                let mut len = [0u8; 4];
                raw.read_exact(&mut len).map_err(backend)?;
                part.resize(u32::from_be_bytes(len) as usize, 0);
                raw.read_exact(part).map_err(backend)?;
            }
            let line = ExportLine {
                tree: (*tree).to_string(),
                key: crate::model::hex(&parts[0]),
                value: crate::model::hex(&parts[1]),
            };
            serde_json::to_writer(&mut *out, &line).map_err(backend)?;
            out.write_all(b"\n").map_err(backend)?;
        }
        out.flush().map_err(backend)
    }

    /// Creates a store in `path` (which must hold no store: every tree
    /// must be empty) from the backup's lines ([`SledStore::raw_to_lines`]), and flushes
    /// it. Returns the records per tree. Blocking (restore is offline).
    pub fn import(
        path: &Path,
        lines: impl std::io::BufRead,
    ) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        const BATCH: usize = 10_000;
        let store = Self::open(path)?;
        for name in TREES {
            let tree = store.tree(name).expect("every listed tree exists");
            if !tree.is_empty() {
                return Err(StoreError::Backend(format!(
                    "{}: the store is not empty (tree {name})",
                    path.display()
                )));
            }
        }
        let mut records: std::collections::BTreeMap<String, u64> =
            TREES.iter().map(|t| (t.to_string(), 0)).collect();
        let mut batch: Vec<(String, Vec<u8>, Vec<u8>)> = Vec::with_capacity(BATCH);
        let apply = |batch: &mut Vec<(String, Vec<u8>, Vec<u8>)>| -> Result<(), StoreError> {
            for (name, k, v) in batch.drain(..) {
                let tree = store.tree(&name).expect("checked when read");
                tree.insert(k, v).map_err(backend)?;
            }
            Ok(())
        };
        for (i, line) in lines.lines().enumerate() {
            let line = line.map_err(backend)?;
            if line.is_empty() {
                continue;
            }
            let bad =
                |why: &str| StoreError::Backend(format!("store export line {}: {why}", i + 1));
            let rec: ExportLine = serde_json::from_str(&line).map_err(|e| bad(&e.to_string()))?;
            if store.tree(&rec.tree).is_none() {
                return Err(bad(&format!("unknown tree {:?}", rec.tree)));
            }
            let k = crate::model::unhex(&rec.key).ok_or_else(|| bad("key is not hex"))?;
            let v = crate::model::unhex(&rec.value).ok_or_else(|| bad("value is not hex"))?;
            *records.entry(rec.tree.clone()).or_default() += 1;
            batch.push((rec.tree, k, v));
            if batch.len() >= BATCH {
                apply(&mut batch)?;
            }
        }
        apply(&mut batch)?;
        store.db.flush().map_err(backend)?;
        Ok(records)
    }
}

#[async_trait]
impl Store for SledStore {
    async fn check(&self) -> Result<(), StoreError> {
        self.tenants.first().map(drop).map_err(backend)
    }

    async fn insert_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let value = encode(tenant)?;
        {
            let _gate = self.gate();
            self.tenants
                .compare_and_swap(tenant.tenant_id.as_bytes(), None::<&[u8]>, Some(value))
                .map_err(backend)?
                .map_err(|_| StoreError::AlreadyExists("tenant"))?;
        }
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
            for item in self.sessions.scan_prefix(prefix(tenant_id)) {
                let (id, value) = item.map_err(backend)?;
                let session: Session = decode(&value)?;
                self.session_tokens
                    .remove(session.token_hash.as_bytes())
                    .map_err(backend)?;
                self.sessions.remove(id).map_err(backend)?;
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

    async fn insert_key(&self, key: &ApiKey, max: i64) -> Result<(), StoreError> {
        let value = encode(key)?;
        let id = scoped(&key.tenant_id, &key.key_id);
        // The count and the insert under one lock: of N+1 racing creations
        // against a bound of N, exactly N succeed.
        {
            let _guard = self.lock();
            if max >= 0 {
                let now = time::OffsetDateTime::now_utc();
                let live = Self::scan::<ApiKey>(&self.keys, &key.tenant_id)?
                    .iter()
                    .filter(|k| k.status != KeyStatus::Revoked)
                    .filter(|k| k.expires_at.is_none_or(|t| t > now))
                    .count() as u64;
                if live >= max as u64 {
                    return Err(StoreError::LimitReached { what: "key", max });
                }
            }
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
        }
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
        {
            let _gate = self.gate();
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
        }
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
            let old: Option<User> = match self.users.get(&key).map_err(backend)? {
                Some(v) => Some(decode(&v)?),
                None => None,
            };
            created = old.is_none_or(|u| u.status == UserStatus::Deleted);
            if created && max >= 0 && self.live_users(&user.tenant_id)?.len() as u64 >= max as u64 {
                return Err(StoreError::LimitReached { what: "user", max });
            }
            self.users.insert(key, encode(user)?).map_err(backend)?;
        }
        self.durable().await?;
        Ok(created)
    }

    async fn list_users(&self, tenant_id: &str) -> Result<Vec<User>, StoreError> {
        self.live_users(tenant_id)
    }

    async fn get_user(&self, tenant_id: &str, user_id: &str) -> Result<Option<User>, StoreError> {
        self.users
            .get(scoped(tenant_id, user_id))
            .map_err(backend)?
            .map(|v| decode(&v))
            .transpose()
    }

    async fn delete_user(&self, tenant_id: &str, user_id: &str) -> Result<bool, StoreError> {
        let existed;
        {
            let _guard = self.lock();
            let key = scoped(tenant_id, user_id);
            let old: Option<User> = match self.users.get(&key).map_err(backend)? {
                Some(v) => Some(decode(&v)?),
                None => None,
            };
            existed = old
                .as_ref()
                .is_some_and(|u| u.status != UserStatus::Deleted);
            if let Some(mut tombstone) = old.filter(|_| existed) {
                tombstone.status = UserStatus::Deleted;
                tombstone.roles.clear();
                tombstone.updated_at = crate::model::now();
                self.users
                    .insert(key, encode(&tombstone)?)
                    .map_err(backend)?;
            }
        }
        self.durable().await?;
        Ok(existed)
    }

    async fn put_session(&self, session: &Session) -> Result<(), StoreError> {
        let value = encode(session)?;
        let id = scoped(&session.tenant_id, &session.session_id);
        {
            let _gate = self.gate();
            (&self.sessions, &self.session_tokens)
                .transaction(|(sessions, tokens)| {
                    sessions.insert(id.as_slice(), value.as_slice())?;
                    tokens.insert(session.token_hash.as_bytes(), id.as_slice())?;
                    Ok(())
                })
                .map_err(tx_error)?;
        }
        self.durable().await
    }

    async fn update_session(&self, session: &Session) -> Result<bool, StoreError> {
        let value = encode(session)?;
        let id = scoped(&session.tenant_id, &session.session_id);
        let existed = {
            let _gate = self.gate();
            self.sessions
                .transaction(|sessions| {
                    if sessions.get(id.as_slice())?.is_none() {
                        return Ok(false);
                    }
                    sessions.insert(id.as_slice(), value.as_slice())?;
                    Ok::<_, ConflictableTransactionError<StoreError>>(true)
                })
                .map_err(tx_error)?
        };
        self.durable().await?;
        Ok(existed)
    }

    async fn touch_session(
        &self,
        tenant_id: &str,
        session_id: &str,
        last_seen: time::OffsetDateTime,
    ) -> Result<(), StoreError> {
        let id = scoped(tenant_id, session_id);
        {
            let _gate = self.gate();
            self.sessions
                .transaction(|sessions| {
                    let Some(old) = sessions.get(id.as_slice())? else {
                        return Ok(());
                    };
                    let mut s: Session =
                        decode(&old).map_err(ConflictableTransactionError::Abort)?;
                    if last_seen > s.last_seen {
                        s.last_seen = last_seen;
                        let value = encode(&s).map_err(ConflictableTransactionError::Abort)?;
                        sessions.insert(id.as_slice(), value)?;
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(tx_error)?;
        }
        self.durable().await
    }

    async fn sweep_sessions(
        &self,
        now: time::OffsetDateTime,
        idle: std::time::Duration,
    ) -> Result<u64, StoreError> {
        let mut ended = Vec::new();
        for item in self.sessions.iter() {
            let (id, value) = item.map_err(backend)?;
            let s: Session = decode(&value)?;
            if now >= s.expires_at || now - s.last_seen >= idle {
                ended.push((id, s.token_hash));
            }
        }
        for (id, token_hash) in &ended {
            let _gate = self.gate();
            (&self.sessions, &self.session_tokens)
                .transaction(|(sessions, tokens)| {
                    sessions.remove(id)?;
                    tokens.remove(token_hash.as_bytes())?;
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(tx_error)?;
        }
        self.durable().await?;
        Ok(ended.len() as u64)
    }

    async fn session_by_token(&self, token_hash: &str) -> Result<Option<Session>, StoreError> {
        let Some(id) = self
            .session_tokens
            .get(token_hash.as_bytes())
            .map_err(backend)?
        else {
            return Ok(None);
        };
        self.sessions
            .get(id)
            .map_err(backend)?
            .map(|v| decode::<Session>(&v))
            .transpose()
            .map(|s| s.filter(|s| s.token_hash == token_hash))
    }

    async fn list_sessions(&self, tenant_id: &str) -> Result<Vec<Session>, StoreError> {
        Self::scan(&self.sessions, tenant_id)
    }

    async fn delete_session(&self, tenant_id: &str, session_id: &str) -> Result<bool, StoreError> {
        let id = scoped(tenant_id, session_id);
        let existed = {
            let _gate = self.gate();
            (&self.sessions, &self.session_tokens)
                .transaction(|(sessions, tokens)| {
                    let Some(old) = sessions.remove(id.as_slice())? else {
                        return Ok(false);
                    };
                    let old: Session = decode(&old).map_err(ConflictableTransactionError::Abort)?;
                    tokens.remove(old.token_hash.as_bytes())?;
                    Ok(true)
                })
                .map_err(tx_error)?
        };
        self.durable().await?;
        Ok(existed)
    }

    async fn put_role(&self, role: &CustomRole) -> Result<bool, StoreError> {
        let created = {
            let _gate = self.gate();
            self.roles
                .insert(scoped(&role.tenant_id, &role.name), encode(role)?)
                .map_err(backend)?
                .is_none()
        };
        self.durable().await?;
        Ok(created)
    }

    async fn list_roles(&self, tenant_id: &str) -> Result<Vec<CustomRole>, StoreError> {
        Self::scan(&self.roles, tenant_id)
    }

    async fn delete_role(&self, tenant_id: &str, name: &str) -> Result<bool, StoreError> {
        let existed = {
            let _gate = self.gate();
            self.roles
                .remove(scoped(tenant_id, name))
                .map_err(backend)?
                .is_some()
        };
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
        {
            let _gate = self.gate();
            self.usage
                .transaction(|tx| {
                    for (key, n) in &keys {
                        let old = counter(tx.get(key.as_slice())?.as_deref());
                        tx.insert(key.as_slice(), &old.saturating_add(*n).to_be_bytes())?;
                    }
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(tx_error)?;
        }
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

    async fn remember_once(&self, key: &str, until: i64) -> Result<bool, StoreError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let new = until.to_be_bytes();
        loop {
            let _gate = self.gate();
            let old = self.once.get(key.as_bytes()).map_err(backend)?;
            if let Some(v) = &old
                && v.len() == 8
                && i64::from_be_bytes(v.as_ref().try_into().expect("8 bytes")) > now
            {
                return Ok(false);
            }
            match self
                .once
                .compare_and_swap(key.as_bytes(), old, Some(&new[..]))
                .map_err(backend)?
            {
                Ok(()) => break,
                Err(_) => continue, // someone else wrote it: look again
            }
        }
        self.durable().await?;
        Ok(true)
    }

    async fn sweep_remembered(&self, now: i64) -> Result<u64, StoreError> {
        let mut removed = 0;
        for item in self.once.iter() {
            let (key, value) = item.map_err(backend)?;
            let expired = value.len() != 8
                || i64::from_be_bytes(value.as_ref().try_into().expect("8 bytes")) <= now;
            // Only if unchanged since read: a fresh remember is kept.
            let _gate = self.gate();
            if expired
                && self
                    .once
                    .compare_and_swap(&key, Some(value), None as Option<&[u8]>)
                    .map_err(backend)?
                    .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.durable().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every tree the store opens is in [`TREES`] (a new tree cannot be
    /// left out of backups), and an export imported into a new store gives
    /// back every record byte for byte, binary values included; an import
    /// never writes into a store that holds records.
    #[test]
    fn an_export_holds_every_tree_and_imports_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("a")).unwrap();
        let mut opened: Vec<String> = store
            .db
            .tree_names()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .filter(|n| n != "__sled__default")
            .collect();
        opened.sort();
        let mut listed: Vec<String> = TREES.iter().map(|t| t.to_string()).collect();
        listed.sort();
        assert_eq!(opened, listed);
        for (i, name) in TREES.iter().enumerate() {
            let tree = store.tree(name).unwrap();
            tree.insert(format!("t/{i}"), vec![0u8, 255, i as u8, b'\n'])
                .unwrap();
            tree.insert(format!("t/{i}/b"), b"{\"json\": true}".to_vec())
                .unwrap();
        }
        let mut raw = Vec::new();
        let exported = store.snapshot(&mut raw).unwrap();
        let mut out = Vec::new();
        SledStore::raw_to_lines(&mut &raw[..], &mut out).unwrap();
        assert!(exported.records.values().all(|n| *n == 2), "{exported:?}");
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 2 * TREES.len());
        let imported = SledStore::import(&dir.path().join("b"), &out[..]).unwrap();
        assert_eq!(imported, exported.records);
        // sled's flusher thread may hold the imported database's file lock
        // a moment after `import` returned (it lets go at its next wake-up).
        let mut attempts = 0;
        let back = loop {
            match SledStore::open(&dir.path().join("b")) {
                Ok(back) => break back,
                Err(e) if attempts < 100 && e.to_string().contains("could not acquire lock") => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("{e}"),
            }
        };
        for name in TREES {
            let a: Vec<_> = store
                .tree(name)
                .unwrap()
                .iter()
                .map(Result::unwrap)
                .collect();
            let b: Vec<_> = back
                .tree(name)
                .unwrap()
                .iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(a, b, "{name}");
        }
        drop(back);
        let again = SledStore::import(&dir.path().join("b"), &out[..]);
        assert!(matches!(again, Err(StoreError::Backend(m)) if m.contains("not empty")));
    }
}
