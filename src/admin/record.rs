//! The admin API's audit records: a refused credential, a call refused
//! before its caller was authorized for it, and every mutation (actor,
//! target, what changed, how it ended) under the event types its route
//! names.

use std::net::IpAddr;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::auth::Caller;
use super::error::ApiError;
use super::ops::AdminOps;
use super::router::Found;
use crate::audit::{Audit, Details, Durability, Event, EventType};
use crate::authn::AuthnError;
use crate::response::{ErrorResponse, Problem};

/// The request facts an admin audit record carries.
pub(super) struct Facts {
    pub(super) client: IpAddr,
    pub(super) user_agent: String,
    pub(super) request_id: String,
    pub(super) method: Method,
    pub(super) path: String,
}

impl Facts {
    /// The facts of `req` from `client`, with the request's id and the path
    /// as recorded.
    pub(super) fn of<B>(
        req: &http::Request<B>,
        client: IpAddr,
        request_id: &http::HeaderValue,
        path: String,
    ) -> Self {
        Self {
            client,
            user_agent: crate::audit::user_agent(req.headers()),
            request_id: String::from_utf8_lossy(request_id.as_bytes()).into_owned(),
            method: req.method().clone(),
            path,
        }
    }

    fn event(&self, event_type: EventType) -> Event {
        Event {
            ip_address: self.client.to_string(),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
            ..Event::new(event_type, Value::Null)
        }
    }

    /// `METHOD /path`, as the records show the action.
    fn action(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    fn event_as(&self, caller: &Caller, event_type: EventType) -> Event {
        Event {
            user_id: caller.actor(),
            ..self.event(event_type)
        }
    }
}

/// How an admin operation ended, for its record.
pub(super) struct Done<'a> {
    pub(super) result: &'a Result<(StatusCode, Value), ApiError>,
    /// Its caller passed the operation's authorization.
    pub(super) authorized: bool,
}

/// Records a refused admin credential (nobody authenticated: aggregated
/// per source like the proxy's anonymous denials).
pub(super) async fn refused_credential(audit: &Audit, facts: &Facts, e: &AuthnError) {
    let Problem { status, code, .. } = e.problem();
    let event = Event {
        details: Details::Json(json!({
            "action": facts.action(),
            "decision": "deny",
            "reason": code,
            "port": "admin",
        })),
        ..facts.event(EventType::AccessDenied)
    };
    if let Err(e) = audit
        .record_anonymous_denial(event, code, status.as_u16())
        .await
    {
        tracing::error!(error = %e, "Refused admin credential not recorded in the audit log.");
    }
}

/// Records an admin call refused before its caller was authorized for
/// it, or naming a tenant that does not exist: under the caller's own
/// tenant (none for the admin token), as a denial, without the body.
/// Whatever a refused caller sends, no record appears in another
/// tenant's log, nothing it invented is written, and no index file is
/// made for a tenant that does not exist.
pub(super) async fn refused(
    audit: &Audit,
    facts: &Facts,
    caller: &Caller,
    e: &ApiError,
) -> Result<(), ApiError> {
    let Problem { status, code, .. } = e.problem();
    let event = Event {
        tenant_id: caller.tenant_id().to_string(),
        details: Details::Json(json!({
            "action": facts.action(),
            "actor": caller.actor(),
            "decision": "deny",
            "reason": code,
            "status": status.as_u16(),
            "port": "admin",
        })),
        ..facts.event_as(caller, EventType::AccessDenied)
    };
    audit.record(event, Durability::Written).await?;
    Ok(())
}

/// Records a backup about to be taken (synced before the snapshot, so
/// the backup holds it; if it cannot be recorded, no backup is taken).
pub(super) async fn backup(audit: &Audit, facts: &Facts, caller: &Caller) -> Result<(), ApiError> {
    let event = Event {
        details: Details::Json(json!({
            "action": facts.action(),
            "actor": caller.actor(),
            "outcome": "started",
        })),
        ..facts.event_as(caller, EventType::AuditBackup)
    };
    audit.record(event, Durability::Synced).await?;
    Ok(())
}

/// A mutation and what it is recorded against.
pub(super) struct Mutation<'a> {
    pub(super) facts: &'a Facts,
    pub(super) caller: &'a Caller,
    pub(super) found: &'a Found<'a>,
    pub(super) body: &'a Bytes,
}

/// Records an admin mutation, successful or not: actor, target, what
/// changed. A successful one is on disk before its 2xx goes out; if it
/// cannot be recorded the caller gets 503 (the change itself stands).
pub(super) async fn mutation(
    audit: &Audit,
    ops: &AdminOps,
    m: Mutation<'_>,
    done: Done<'_>,
) -> Result<(), ApiError> {
    let Mutation {
        facts,
        caller,
        found,
        body,
    } = m;
    let result = done.result;
    // A deleted user's identifiers are erased from the log (GDPR, see
    // `audit::erasure`): the records of their deletion, whatever its
    // outcome (a retried delete answers 404; a refused one is recorded
    // too), name only their pseudonym.
    let erased = found
        .user()
        .zip(found.tenant())
        .filter(|_| {
            // (A deletion's event type does not depend on its outcome.)
            found
                .event_types(StatusCode::OK, &Value::Null)
                .contains(&EventType::UserDeleted)
        })
        .map(|(user, tenant)| {
            let pseudonym = audit.pseudonym(tenant, user);
            let who = crate::audit::subject::Target {
                tenant_id: tenant,
                user_id: user,
                email: None,
                pseudonym: &pseudonym,
            };
            let path = crate::audit::subject::pseudonymise_action(&facts.path, &who);
            (user, pseudonym, path)
        });
    let pseudonymised;
    let facts = match &erased {
        Some((_, _, path)) => {
            pseudonymised = Facts {
                client: facts.client,
                user_agent: facts.user_agent.clone(),
                request_id: facts.request_id.clone(),
                method: facts.method.clone(),
                path: path.clone(),
            };
            &pseudonymised
        }
        None => facts,
    };
    if let Err(e) = result {
        let exists = match found.tenant() {
            Some(t) => ops.tenant_exists(t).await,
            None => true,
        };
        // Refused on the target too (a key or user more powerful than
        // the caller): as unauthorised as a refusal for the tenant.
        let forbidden = matches!(e, ApiError::Forbidden(_) | ApiError::TenantMismatch);
        if !done.authorized || !exists || forbidden {
            return refused(audit, facts, caller, e).await;
        }
    }
    let (status, outcome, error_code) = match result {
        Ok((status, _)) => (*status, "success", None),
        Err(e) => {
            let Problem { status, code, .. } = e.problem();
            (status, "failure", Some(code))
        }
    };
    let created = result.as_ref().ok().map(|(_, v)| v);
    let tenant = found
        .tenant()
        .map(str::to_string)
        .or_else(|| created.and_then(|v| v["tenant_id"].as_str().map(str::to_string)))
        .unwrap_or_default();
    // What changed: the request body (admin bodies never carry a
    // secret) and the ids the response names (never the key it returns).
    let changes: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut target = serde_json::Map::new();
    if let Some(v) = created {
        for id in ["tenant_id", "key_id", "project_id", "user_id", "name"] {
            if let Some(x) = v.get(id).filter(|x| x.is_string()) {
                target.insert(id.to_string(), x.clone());
            }
        }
    }
    let event_types = found.event_types(status, &changes);
    let action = facts.action();
    let mut actor = caller.actor();
    let mut erasure = Value::Null;
    if let Some((user, pseudonym, _)) = &erased {
        if target.get("user_id").and_then(Value::as_str) == Some(*user) {
            target.insert("user_id".into(), Value::String(pseudonym.clone()));
        }
        if actor == *user {
            actor = pseudonym.clone();
        }
        if let Some(e) = created.and_then(|v| v.get("audit_erasure")) {
            erasure = e.clone();
        }
    }
    let mut events = Vec::new();
    for event_type in event_types {
        let mut event = Event {
            tenant_id: tenant.clone(),
            details: Details::Json(json!({
                "action": action,
                "actor": actor,
                "target": target,
                "changes": changes,
                "outcome": outcome,
                "status": status.as_u16(),
                "error": error_code,
            })),
            ..facts.event_as(caller, event_type)
        };
        if let Some((user, _, _)) = &erased {
            if event.user_id == *user {
                // The user deleted themselves: their address and agent
                // go with their id.
                event.user_id = actor.clone();
                event.ip_address.clear();
                event.user_agent.clear();
            }
            if let (Details::Json(d), false) = (&mut event.details, erasure.is_null()) {
                d["erasure"] = erasure.clone();
            }
        }
        events.push(event);
    }
    let durability = if outcome == "success" {
        Durability::Synced
    } else {
        Durability::Written
    };
    for event in events {
        audit.record(event, durability).await?;
    }
    Ok(())
}
