//! Sessions for [`PgStore`] (the [`crate::store::Store`] methods delegate
//! here). As in the embedded store, the token index is written by
//! `put_session` only: `update_session` replaces the record, and a lookup
//! returns a session only if its record still carries the token looked up.

use tokio_postgres::types::Json;

use super::{PgStore, doc, docs, nanos, pg, rollback};
use crate::model::Session;
use crate::store::{Change, StoreError};

impl PgStore {
    pub(super) async fn put_session_row(&self, session: &Session) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        // The token now belongs to this session (the embedded store's index
        // is last-writer-wins too): another session holding it loses it.
        tx.execute(
            "UPDATE sessions SET token_hash = NULL WHERE token_hash = $1 \
             AND NOT (tenant_id = $2 AND session_id = $3)",
            &[&session.token_hash, &session.tenant_id, &session.session_id],
        )
        .await
        .map_err(pg)?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO sessions \
                 (tenant_id, session_id, token_hash, expires_ns, last_seen_ns, doc) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (tenant_id, session_id) DO UPDATE SET \
                 token_hash = EXCLUDED.token_hash, expires_ns = EXCLUDED.expires_ns, \
                 last_seen_ns = EXCLUDED.last_seen_ns, doc = EXCLUDED.doc",
            )
            .await
            .map_err(pg)?;
        tx.execute(
            &stmt,
            &[
                &session.tenant_id,
                &session.session_id,
                &session.token_hash,
                &nanos(session.expires_at),
                &nanos(session.last_seen),
                &Json(session),
            ],
        )
        .await
        .map_err(pg)?;
        // A new session's token was never cached as valid: no event.
        self.commit(tx, vec![]).await
    }

    pub(super) async fn update_session_row(&self, session: &Session) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let old: Option<Session> = doc(
            &tx,
            "SELECT doc FROM sessions WHERE tenant_id = $1 AND session_id = $2 FOR UPDATE",
            &[&session.tenant_id, &session.session_id],
        )
        .await?;
        if old.is_some() {
            tx.execute(
                "UPDATE sessions SET expires_ns = $3, last_seen_ns = $4, doc = $5 \
                 WHERE tenant_id = $1 AND session_id = $2",
                &[
                    &session.tenant_id,
                    &session.session_id,
                    &nanos(session.expires_at),
                    &nanos(session.last_seen),
                    &Json(session),
                ],
            )
            .await
            .map_err(pg)?;
        }
        let Some(old) = old else {
            return rollback(tx, Ok(false)).await;
        };
        let mut changes = vec![Change::Session {
            token_hash: old.token_hash.clone(),
        }];
        if session.token_hash != old.token_hash {
            changes.push(Change::Session {
                token_hash: session.token_hash.clone(),
            });
        }
        self.commit(tx, changes).await?;
        Ok(true)
    }

    pub(super) async fn touch_session_row(
        &self,
        tenant_id: &str,
        session_id: &str,
        last_seen: time::OffsetDateTime,
    ) -> Result<(), StoreError> {
        // Read, then write only if later, in one transaction (row locked):
        // the record is rewritten by the model's own serializer.
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let old: Option<Session> = doc(
            &tx,
            "SELECT doc FROM sessions WHERE tenant_id = $1 AND session_id = $2 FOR UPDATE",
            &[&tenant_id, &session_id],
        )
        .await?;
        let Some(mut s) = old else {
            return rollback(tx, Ok(())).await;
        };
        if last_seen > s.last_seen {
            s.last_seen = last_seen;
            tx.execute(
                "UPDATE sessions SET last_seen_ns = $3, doc = $4 \
                 WHERE tenant_id = $1 AND session_id = $2",
                &[&tenant_id, &session_id, &nanos(last_seen), &Json(&s)],
            )
            .await
            .map_err(pg)?;
        }
        // Activity changes nothing a cache decides: no event.
        self.commit(tx, vec![]).await
    }

    pub(super) async fn sweep_session_rows(
        &self,
        now: time::OffsetDateTime,
        idle: std::time::Duration,
    ) -> Result<u64, StoreError> {
        // `now >= expires_at || now - last_seen >= idle`, in nanoseconds.
        let now = nanos(now);
        let idle = i64::try_from(idle.as_nanos()).unwrap_or(i64::MAX);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let ended: Vec<Session> = docs(
            &tx,
            "DELETE FROM sessions WHERE expires_ns <= $1 OR last_seen_ns <= $2 RETURNING doc",
            &[&now, &now.saturating_sub(idle)],
        )
        .await?;
        let count = ended.len() as u64;
        let changes = ended
            .into_iter()
            .map(|s| Change::Session {
                token_hash: s.token_hash,
            })
            .collect();
        self.commit(tx, changes).await?;
        Ok(count)
    }

    pub(super) async fn session_row_by_token(
        &self,
        token_hash: &str,
    ) -> Result<Option<Session>, StoreError> {
        let client = self.client().await?;
        let session: Option<Session> = doc(
            &client,
            "SELECT doc FROM sessions WHERE token_hash = $1",
            &[&token_hash],
        )
        .await?;
        Ok(session.filter(|s| s.token_hash == token_hash))
    }

    pub(super) async fn session_rows(&self, tenant_id: &str) -> Result<Vec<Session>, StoreError> {
        let client = self.client().await?;
        docs(
            &client,
            "SELECT doc FROM sessions WHERE tenant_id = $1 ORDER BY session_id",
            &[&tenant_id],
        )
        .await
    }

    pub(super) async fn delete_session_row(
        &self,
        tenant_id: &str,
        session_id: &str,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg)?;
        let old: Option<Session> = doc(
            &tx,
            "DELETE FROM sessions WHERE tenant_id = $1 AND session_id = $2 RETURNING doc",
            &[&tenant_id, &session_id],
        )
        .await?;
        let Some(old) = old else {
            return rollback(tx, Ok(false)).await;
        };
        let change = Change::Session {
            token_hash: old.token_hash,
        };
        self.commit(tx, vec![change]).await?;
        Ok(true)
    }
}
