//! [`Store`] for [`PgStore`]: tenants, keys, projects, users, roles,
//! usage and one-time values (sessions are in `sessions.rs`). Each method
//! mirrors the embedded store's semantics; the comments say where SQL
//! needed care to get there.

use async_trait::async_trait;
use tokio_postgres::types::Json;

use super::{PgStore, doc, docs, pg, pg_unique, rollback};
use crate::model::{ApiKey, CustomRole, KeyStatus, Project, Session, Tenant, User, UserStatus};
use crate::store::{Change, Removed, Store, StoreError, UsageKey};

/// A key's hashes: current, then previous if any.
fn hashes(key: &ApiKey) -> impl Iterator<Item = &String> {
    std::iter::once(&key.hash).chain(key.previous_hash.as_ref())
}

/// A counter value as stored (`bigint`): amounts past `i64::MAX` saturate
/// there, as the embedded store saturates at `u64::MAX`.
fn amount(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl Store for PgStore {
    async fn check(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .query_opt("SELECT tenant_id FROM tenants LIMIT 1", &[])
            .await
            .map(drop)
            .map_err(pg)
    }

    async fn insert_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let stmt = tx
            .prepare_cached("INSERT INTO tenants (tenant_id, doc) VALUES ($1, $2)")
            .await
            .map_err(pg)?;
        if let Err(e) = tx.execute(&stmt, &[&tenant.tenant_id, &Json(tenant)]).await {
            return rollback(tx, Err(pg_unique("tenant")(e))).await;
        }
        let change = Change::Tenant {
            tenant_id: tenant.tenant_id.clone(),
            deleted: false,
        };
        self.commit(tx, vec![change]).await
    }

    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<Tenant>, StoreError> {
        let client = self.client().await?;
        doc(
            &client,
            "SELECT doc FROM tenants WHERE tenant_id = $1",
            &[&tenant_id],
        )
        .await
    }

    async fn list_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let client = self.client().await?;
        docs(&client, "SELECT doc FROM tenants ORDER BY tenant_id", &[]).await
    }

    async fn update_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let stmt = tx
            .prepare_cached("UPDATE tenants SET doc = $2 WHERE tenant_id = $1")
            .await
            .map_err(pg)?;
        if tx
            .execute(&stmt, &[&tenant.tenant_id, &Json(tenant)])
            .await
            .map_err(pg)?
            == 0
        {
            return rollback(tx, Err(StoreError::NotFound("tenant"))).await;
        }
        let change = Change::Tenant {
            tenant_id: tenant.tenant_id.clone(),
            deleted: false,
        };
        self.commit(tx, vec![change]).await
    }

    async fn delete_tenant(&self, tenant_id: &str) -> Result<Removed, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // Waits for the tenant's in-flight limit checks, so none inserts
        // into a tenant being deleted.
        self.lock_tenant(&tx, tenant_id).await?;
        if tx
            .execute("DELETE FROM tenants WHERE tenant_id = $1", &[&tenant_id])
            .await
            .map_err(pg)?
            == 0
        {
            return rollback(tx, Err(StoreError::NotFound("tenant"))).await;
        }
        let keys: Vec<ApiKey> = docs(
            &tx,
            "DELETE FROM api_keys WHERE tenant_id = $1 RETURNING doc",
            &[&tenant_id],
        )
        .await?;
        let removed = Removed {
            key_hashes: keys.iter().flat_map(hashes).cloned().collect(),
        };
        tx.execute(
            "DELETE FROM key_hashes WHERE hash = ANY($1)",
            &[&removed.key_hashes],
        )
        .await
        .map_err(pg)?;
        let sessions: Vec<Session> = docs(
            &tx,
            "DELETE FROM sessions WHERE tenant_id = $1 RETURNING doc",
            &[&tenant_id],
        )
        .await?;
        for table in ["projects", "users", "custom_roles", "usage"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE tenant_id = $1"),
                &[&tenant_id],
            )
            .await
            .map_err(pg)?;
        }
        let mut changes = vec![Change::Tenant {
            tenant_id: tenant_id.to_string(),
            deleted: true,
        }];
        if !removed.key_hashes.is_empty() {
            changes.push(Change::KeyHashes {
                hashes: removed.key_hashes.clone(),
            });
        }
        changes.extend(sessions.into_iter().map(|s| Change::Session {
            token_hash: s.token_hash,
        }));
        self.commit(tx, changes).await?;
        Ok(removed)
    }

    async fn insert_key(&self, key: &ApiKey, max: i64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // The count and the insert in one transaction under the tenant's
        // lock: of N+1 racing creations (any replicas) against N, N succeed.
        self.lock_tenant(&tx, &key.tenant_id).await?;
        if max >= 0 {
            let now = time::OffsetDateTime::now_utc();
            let keys: Vec<ApiKey> = docs(
                &tx,
                "SELECT doc FROM api_keys WHERE tenant_id = $1",
                &[&key.tenant_id],
            )
            .await?;
            let live = keys
                .iter()
                .filter(|k| k.status != KeyStatus::Revoked)
                .filter(|k| k.expires_at.is_none_or(|t| t > now))
                .count() as u64;
            if live >= max as u64 {
                return rollback(tx, Err(StoreError::LimitReached { what: "key", max })).await;
            }
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO api_keys (tenant_id, key_id, doc) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .await
            .map_err(pg)?;
        if tx
            .execute(&stmt, &[&key.tenant_id, &key.key_id, &Json(key)])
            .await
            .map_err(pg)?
            == 0
        {
            return rollback(tx, Err(StoreError::AlreadyExists("key"))).await;
        }
        // As the embedded store: the new key's current hash only.
        upsert_hash(&tx, &key.hash, key).await?;
        // A miss on this hash may be cached: it must go.
        let change = Change::KeyHashes {
            hashes: vec![key.hash.clone()],
        };
        self.commit(tx, vec![change]).await
    }

    async fn get_key(&self, tenant_id: &str, key_id: &str) -> Result<Option<ApiKey>, StoreError> {
        let client = self.client().await?;
        doc(
            &client,
            "SELECT doc FROM api_keys WHERE tenant_id = $1 AND key_id = $2",
            &[&tenant_id, &key_id],
        )
        .await
    }

    async fn key_by_hash(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let client = self.client().await?;
        let key: Option<ApiKey> = doc(
            &client,
            "SELECT k.doc FROM key_hashes h \
             JOIN api_keys k ON k.tenant_id = h.tenant_id AND k.key_id = h.key_id \
             WHERE h.hash = $1",
            &[&hash],
        )
        .await?;
        Ok(key.filter(|k| k.hash == hash || k.previous_hash.as_deref() == Some(hash)))
    }

    async fn list_keys(&self, tenant_id: &str) -> Result<Vec<ApiKey>, StoreError> {
        let client = self.client().await?;
        docs(
            &client,
            "SELECT doc FROM api_keys WHERE tenant_id = $1 ORDER BY key_id",
            &[&tenant_id],
        )
        .await
    }

    async fn update_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let old: Option<ApiKey> = doc(
            &tx,
            "SELECT doc FROM api_keys WHERE tenant_id = $1 AND key_id = $2 FOR UPDATE",
            &[&key.tenant_id, &key.key_id],
        )
        .await?;
        let Some(old) = old else {
            return rollback(tx, Err(StoreError::NotFound("key"))).await;
        };
        let new_hashes: Vec<&String> = hashes(key).collect();
        let gone: Vec<&String> = hashes(&old).filter(|h| !new_hashes.contains(h)).collect();
        if !gone.is_empty() {
            tx.execute("DELETE FROM key_hashes WHERE hash = ANY($1)", &[&gone])
                .await
                .map_err(pg)?;
        }
        for hash in &new_hashes {
            upsert_hash(&tx, hash, key).await?;
        }
        let stmt = tx
            .prepare_cached("UPDATE api_keys SET doc = $3 WHERE tenant_id = $1 AND key_id = $2")
            .await
            .map_err(pg)?;
        tx.execute(&stmt, &[&key.tenant_id, &key.key_id, &Json(key)])
            .await
            .map_err(pg)?;
        // Caches hold the old hashes (hits) and maybe the new ones (misses).
        let mut all: Vec<String> = hashes(&old).cloned().collect();
        for hash in new_hashes {
            if !all.contains(hash) {
                all.push(hash.clone());
            }
        }
        self.commit(tx, vec![Change::KeyHashes { hashes: all }])
            .await
    }

    async fn insert_project(&self, project: &Project, max: i64) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        self.lock_tenant(&tx, &project.tenant_id).await?;
        if max >= 0 {
            let row = tx
                .query_one(
                    "SELECT count(*) FROM projects WHERE tenant_id = $1",
                    &[&project.tenant_id],
                )
                .await
                .map_err(pg)?;
            if row.try_get::<_, i64>(0).map_err(pg)? >= max {
                let limit = StoreError::LimitReached {
                    what: "project",
                    max,
                };
                return rollback(tx, Err(limit)).await;
            }
        }
        let inserted = tx
            .execute(
                "INSERT INTO projects (tenant_id, project_id, doc) VALUES ($1, $2, $3)",
                &[&project.tenant_id, &project.project_id, &Json(project)],
            )
            .await;
        if let Err(e) = inserted {
            return rollback(tx, Err(pg_unique("project")(e))).await;
        }
        let change = Change::Roles {
            tenant_id: project.tenant_id.clone(),
        };
        self.commit(tx, vec![change]).await
    }

    async fn list_projects(&self, tenant_id: &str) -> Result<Vec<Project>, StoreError> {
        let client = self.client().await?;
        docs(
            &client,
            "SELECT doc FROM projects WHERE tenant_id = $1 ORDER BY project_id",
            &[&tenant_id],
        )
        .await
    }

    async fn get_project(
        &self,
        tenant_id: &str,
        project_id: &str,
    ) -> Result<Option<Project>, StoreError> {
        let client = self.client().await?;
        doc(
            &client,
            "SELECT doc FROM projects WHERE tenant_id = $1 AND project_id = $2",
            &[&tenant_id, &project_id],
        )
        .await
    }

    async fn put_user(&self, user: &User, max: i64) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        self.lock_tenant(&tx, &user.tenant_id).await?;
        let old = tx
            .query_opt(
                "SELECT deleted FROM users WHERE tenant_id = $1 AND user_id = $2",
                &[&user.tenant_id, &user.user_id],
            )
            .await
            .map_err(pg)?;
        let created = match old {
            None => true,
            Some(row) => row.try_get::<_, bool>(0).map_err(pg)?,
        };
        if created && max >= 0 {
            let row = tx
                .query_one(
                    "SELECT count(*) FROM users WHERE tenant_id = $1 AND NOT deleted",
                    &[&user.tenant_id],
                )
                .await
                .map_err(pg)?;
            if row.try_get::<_, i64>(0).map_err(pg)? >= max {
                return rollback(tx, Err(StoreError::LimitReached { what: "user", max })).await;
            }
        }
        tx.execute(
            "INSERT INTO users (tenant_id, user_id, deleted, doc) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, user_id) \
             DO UPDATE SET deleted = EXCLUDED.deleted, doc = EXCLUDED.doc",
            &[
                &user.tenant_id,
                &user.user_id,
                &(user.status == UserStatus::Deleted),
                &Json(user),
            ],
        )
        .await
        .map_err(pg)?;
        let change = Change::User {
            tenant_id: user.tenant_id.clone(),
            user_id: user.user_id.clone(),
        };
        self.commit(tx, vec![change]).await?;
        Ok(created)
    }

    async fn list_users(&self, tenant_id: &str) -> Result<Vec<User>, StoreError> {
        let client = self.client().await?;
        docs(
            &client,
            "SELECT doc FROM users WHERE tenant_id = $1 AND NOT deleted ORDER BY user_id",
            &[&tenant_id],
        )
        .await
    }

    async fn get_user(&self, tenant_id: &str, user_id: &str) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        doc(
            &client,
            "SELECT doc FROM users WHERE tenant_id = $1 AND user_id = $2",
            &[&tenant_id, &user_id],
        )
        .await
    }

    async fn delete_user(&self, tenant_id: &str, user_id: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let old: Option<User> = doc(
            &tx,
            "SELECT doc FROM users WHERE tenant_id = $1 AND user_id = $2 AND NOT deleted \
             FOR UPDATE",
            &[&tenant_id, &user_id],
        )
        .await?;
        let Some(mut tombstone) = old else {
            return rollback(tx, Ok(false)).await;
        };
        tombstone.status = UserStatus::Deleted;
        tombstone.roles.clear();
        tombstone.updated_at = crate::model::now();
        tx.execute(
            "UPDATE users SET deleted = true, doc = $3 WHERE tenant_id = $1 AND user_id = $2",
            &[&tenant_id, &user_id, &Json(&tombstone)],
        )
        .await
        .map_err(pg)?;
        let change = Change::User {
            tenant_id: tenant_id.to_string(),
            user_id: user_id.to_string(),
        };
        self.commit(tx, vec![change]).await?;
        Ok(true)
    }

    async fn put_role(&self, role: &CustomRole) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // `xmax = 0`: the row was inserted, not updated.
        let row = tx
            .query_one(
                "INSERT INTO custom_roles (tenant_id, name, doc) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant_id, name) DO UPDATE SET doc = EXCLUDED.doc \
                 RETURNING (xmax = 0)",
                &[&role.tenant_id, &role.name, &Json(role)],
            )
            .await
            .map_err(pg)?;
        let created: bool = row.try_get(0).map_err(pg)?;
        let change = Change::Roles {
            tenant_id: role.tenant_id.clone(),
        };
        self.commit(tx, vec![change]).await?;
        Ok(created)
    }

    async fn list_roles(&self, tenant_id: &str) -> Result<Vec<CustomRole>, StoreError> {
        let client = self.client().await?;
        docs(
            &client,
            "SELECT doc FROM custom_roles WHERE tenant_id = $1 ORDER BY name",
            &[&tenant_id],
        )
        .await
    }

    async fn delete_role(&self, tenant_id: &str, name: &str) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let existed = tx
            .execute(
                "DELETE FROM custom_roles WHERE tenant_id = $1 AND name = $2",
                &[&tenant_id, &name],
            )
            .await
            .map_err(pg)?
            > 0;
        let changes = if existed {
            vec![Change::Roles {
                tenant_id: tenant_id.to_string(),
            }]
        } else {
            vec![]
        };
        self.commit(tx, changes).await?;
        Ok(existed)
    }

    async fn add_usage(&self, batch: &[(UsageKey, u64)]) -> Result<(), StoreError> {
        // One transaction: a failed batch adds nothing, so the caller can
        // retry all of it without counting anything twice.
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO usage (tenant_id, name, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant_id, name) DO UPDATE \
                 SET value = LEAST(usage.value::numeric + EXCLUDED.value, 9223372036854775807)::bigint",
            )
            .await
            .map_err(pg)?;
        for (key, n) in batch {
            let tenant_id: &str = &key.tenant_id;
            tx.execute(&stmt, &[&tenant_id, &key.name(), &amount(*n)])
                .await
                .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)
    }

    async fn usage(&self, key: &UsageKey) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let tenant_id: &str = &key.tenant_id;
        let stmt = client
            .prepare_cached("SELECT value FROM usage WHERE tenant_id = $1 AND name = $2")
            .await
            .map_err(pg)?;
        let row = client
            .query_opt(&stmt, &[&tenant_id, &key.name()])
            .await
            .map_err(pg)?;
        match row {
            None => Ok(0),
            Some(row) => Ok(u64::try_from(row.try_get::<_, i64>(0).map_err(pg)?).unwrap_or(0)),
        }
    }

    async fn put_session(&self, session: &Session) -> Result<(), StoreError> {
        self.put_session_row(session).await
    }

    async fn update_session(&self, session: &Session) -> Result<bool, StoreError> {
        self.update_session_row(session).await
    }

    async fn touch_session(
        &self,
        tenant_id: &str,
        session_id: &str,
        last_seen: time::OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.touch_session_row(tenant_id, session_id, last_seen)
            .await
    }

    async fn sweep_sessions(
        &self,
        now: time::OffsetDateTime,
        idle: std::time::Duration,
    ) -> Result<u64, StoreError> {
        self.sweep_session_rows(now, idle).await
    }

    async fn session_by_token(&self, token_hash: &str) -> Result<Option<Session>, StoreError> {
        self.session_row_by_token(token_hash).await
    }

    async fn list_sessions(&self, tenant_id: &str) -> Result<Vec<Session>, StoreError> {
        self.session_rows(tenant_id).await
    }

    async fn delete_session(&self, tenant_id: &str, session_id: &str) -> Result<bool, StoreError> {
        self.delete_session_row(tenant_id, session_id).await
    }

    async fn remember_once(&self, key: &str, until: i64) -> Result<bool, StoreError> {
        // One statement, atomic: a fresh key is inserted; a taken one is
        // overwritten only if its time passed (as the embedded store, by
        // this replica's clock). A racing second caller waits for the
        // first's row and then sees it unexpired: exactly one true.
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO remembered (key, until) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET until = EXCLUDED.until \
                 WHERE remembered.until <= $3 \
                 RETURNING 1",
            )
            .await
            .map_err(pg)?;
        let row = client
            .query_opt(&stmt, &[&key, &until, &now])
            .await
            .map_err(pg)?;
        Ok(row.is_some())
    }

    async fn sweep_remembered(&self, now: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute("DELETE FROM remembered WHERE until <= $1", &[&now])
            .await
            .map_err(pg)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write returned after its COMMIT: nothing is pending.
        Ok(())
    }
}

/// Points `hash` at `key` (the last writer of a hash owns it).
async fn upsert_hash(
    tx: &deadpool_postgres::Transaction<'_>,
    hash: &str,
    key: &ApiKey,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO key_hashes (hash, tenant_id, key_id) VALUES ($1, $2, $3) \
             ON CONFLICT (hash) DO UPDATE \
             SET tenant_id = EXCLUDED.tenant_id, key_id = EXCLUDED.key_id",
        )
        .await
        .map_err(pg)?;
    tx.execute(&stmt, &[&hash, &key.tenant_id, &key.key_id])
        .await
        .map(drop)
        .map_err(pg)
}
