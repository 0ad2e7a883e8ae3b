//! The contract every [`Store`] backend must meet, as one suite a backend's
//! tests call with a fresh, empty store: `conformance::run(&store).await`.
//! It panics with the failed expectation.

use time::Duration;

use super::{Counter, Store, StoreError, UsageKey};
use crate::model::{
    self, ApiKey, CustomRole, Grant, GrantConditions, HoursUtc, KeyStatus, Project, Session,
    Tenant, TenantStatus, Tier, User, UserStatus,
};

/// A tenant with fresh ids, for the suite.
pub fn sample_tenant(tier: Tier) -> Tenant {
    let now = model::now();
    Tenant {
        tenant_id: model::new_id("org-"),
        organization_name: "Conformance Corp".into(),
        admin_email: "admin@conformance.example".into(),
        tier,
        limits: tier.default_limits(),
        status: TenantStatus::Active,
        settings: model::TenantSettings {
            data_region: "us-east-1".into(),
            encryption_enabled: true,
            audit_logging: true,
            sso_enabled: false,
            custom_domain: None,
        },
        created_at: now,
        updated_at: now,
    }
}

/// A key of `tenant_id` whose secret hashes to `hash`.
pub fn sample_key(tenant_id: &str, hash: &str) -> ApiKey {
    ApiKey {
        key_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: tenant_id.into(),
        description: "conformance".into(),
        roles: vec!["viewer".into()],
        grants: vec![],
        scopes: vec![],
        rate_limit_per_minute: None,
        expires_at: None,
        status: KeyStatus::Active,
        hash: hash.into(),
        previous_hash: None,
        previous_valid_until: None,
        created_at: model::now(),
        rotated_at: None,
        created_by: "conformance".into(),
    }
}

/// Runs every check against an empty store.
pub async fn run(store: &dyn Store) {
    store.check().await.expect("check on an empty store");
    tenants(store).await;
    keys(store).await;
    key_limit(store).await;
    projects_and_limits(store).await;
    users_and_limits(store).await;
    grants(store).await;
    usage(store).await;
    roles(store).await;
    sessions(store).await;
    remembered(store).await;
    cascade(store).await;
    store.flush().await.expect("flush");
}

async fn tenants(store: &dyn Store) {
    let mut t = sample_tenant(Tier::Standard);
    store.insert_tenant(&t).await.unwrap();
    assert!(
        matches!(
            store.insert_tenant(&t).await,
            Err(StoreError::AlreadyExists(_))
        ),
        "duplicate tenant id"
    );
    assert_eq!(
        store.get_tenant(&t.tenant_id).await.unwrap().as_ref(),
        Some(&t)
    );
    t.status = TenantStatus::Suspended;
    t.organization_name = "Renamed".into();
    store.update_tenant(&t).await.unwrap();
    assert_eq!(
        store
            .get_tenant(&t.tenant_id)
            .await
            .unwrap()
            .unwrap()
            .organization_name,
        "Renamed"
    );
    let ghost = sample_tenant(Tier::Free);
    assert!(
        matches!(
            store.update_tenant(&ghost).await,
            Err(StoreError::NotFound(_))
        ),
        "update of a missing tenant"
    );
    assert!(
        store
            .list_tenants()
            .await
            .unwrap()
            .iter()
            .any(|x| x.tenant_id == t.tenant_id)
    );
    assert!(store.get_tenant("org-00000000").await.unwrap().is_none());
}

async fn keys(store: &dyn Store) {
    let t = sample_tenant(Tier::Free);
    store.insert_tenant(&t).await.unwrap();
    let mut k = sample_key(&t.tenant_id, "aa01");
    store.insert_key(&k, -1).await.unwrap();
    assert!(
        matches!(
            store.insert_key(&k, -1).await,
            Err(StoreError::AlreadyExists(_))
        ),
        "duplicate key id"
    );
    assert_eq!(store.key_by_hash("aa01").await.unwrap().as_ref(), Some(&k));
    assert_eq!(
        store
            .get_key(&t.tenant_id, &k.key_id)
            .await
            .unwrap()
            .as_ref(),
        Some(&k)
    );
    assert!(
        store
            .get_key("org-00000000", &k.key_id)
            .await
            .unwrap()
            .is_none(),
        "keys are per tenant"
    );
    assert!(store.key_by_hash("ffff").await.unwrap().is_none());

    // Rotation with grace: both hashes resolve.
    k.previous_hash = Some(k.hash.clone());
    k.previous_valid_until = Some(model::now() + Duration::minutes(5));
    k.hash = "aa02".into();
    store.update_key(&k).await.unwrap();
    assert_eq!(
        store.key_by_hash("aa02").await.unwrap().unwrap().key_id,
        k.key_id
    );
    assert_eq!(
        store.key_by_hash("aa01").await.unwrap().unwrap().key_id,
        k.key_id
    );

    // Rotation without grace: the old hash stops resolving.
    k.previous_hash = None;
    k.previous_valid_until = None;
    k.hash = "aa03".into();
    store.update_key(&k).await.unwrap();
    assert!(store.key_by_hash("aa01").await.unwrap().is_none());
    assert!(store.key_by_hash("aa02").await.unwrap().is_none());
    assert!(store.key_by_hash("aa03").await.unwrap().is_some());

    k.status = KeyStatus::Revoked;
    store.update_key(&k).await.unwrap();
    assert_eq!(
        store.key_by_hash("aa03").await.unwrap().unwrap().status,
        KeyStatus::Revoked
    );
    let other = sample_key(&t.tenant_id, "aa04");
    assert!(matches!(
        store.update_key(&other).await,
        Err(StoreError::NotFound(_))
    ));
    store.insert_key(&other, -1).await.unwrap();
    let listed = store.list_keys(&t.tenant_id).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(store.list_keys("org-00000000").await.unwrap().is_empty());
}

fn project(tenant_id: &str, name: &str) -> Project {
    Project {
        project_id: model::new_id("proj-"),
        tenant_id: tenant_id.into(),
        name: name.into(),
        budget: 100.0,
        created_at: model::now(),
    }
}

async fn key_limit(store: &dyn Store) {
    let t = sample_tenant(Tier::Free);
    store.insert_tenant(&t).await.unwrap();
    let first = sample_key(&t.tenant_id, "limit01");
    store.insert_key(&first, 2).await.unwrap();
    store
        .insert_key(&sample_key(&t.tenant_id, "limit02"), 2)
        .await
        .unwrap();
    assert!(
        matches!(
            store
                .insert_key(&sample_key(&t.tenant_id, "limit03"), 2)
                .await,
            Err(StoreError::LimitReached { what: "key", .. })
        ),
        "a third live key over a bound of 2"
    );
    assert!(store.key_by_hash("limit03").await.unwrap().is_none());
    let mut revoked = first.clone();
    revoked.status = KeyStatus::Revoked;
    store.update_key(&revoked).await.unwrap();
    store
        .insert_key(&sample_key(&t.tenant_id, "limit04"), 2)
        .await
        .expect("a revoked key makes room");
}

async fn projects_and_limits(store: &dyn Store) {
    let t = sample_tenant(Tier::Free);
    store.insert_tenant(&t).await.unwrap();
    for i in 0..3 {
        store
            .insert_project(&project(&t.tenant_id, &format!("p{i}")), 3)
            .await
            .unwrap();
    }
    let over = store.insert_project(&project(&t.tenant_id, "p3"), 3).await;
    assert!(
        matches!(over, Err(StoreError::LimitReached { max: 3, .. })),
        "{over:?}"
    );
    let listed = store.list_projects(&t.tenant_id).await.unwrap();
    assert_eq!(listed.len(), 3);
    let one = &listed[0];
    assert_eq!(
        store
            .get_project(&t.tenant_id, &one.project_id)
            .await
            .unwrap()
            .as_ref(),
        Some(one)
    );
    assert!(
        store
            .get_project("org-00000000", &one.project_id)
            .await
            .unwrap()
            .is_none(),
        "projects are per tenant"
    );
    // -1 is unlimited.
    let e = sample_tenant(Tier::Enterprise);
    store.insert_tenant(&e).await.unwrap();
    for i in 0..5 {
        store
            .insert_project(&project(&e.tenant_id, &format!("p{i}")), -1)
            .await
            .unwrap();
    }
}

/// Project-scoped grants, conditions included, come back as written on
/// keys (through a rotation's update too) and users.
async fn grants(store: &dyn Store) {
    let t = sample_tenant(Tier::Standard);
    store.insert_tenant(&t).await.unwrap();
    let granted = vec![
        Grant {
            role: "analyst".into(),
            projects: vec!["proj-0000000a".into(), "proj-0000000b".into()],
            conditions: None,
        },
        Grant {
            role: "budget_manager".into(),
            projects: vec!["proj-0000000a".into()],
            conditions: Some(GrantConditions {
                networks: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
                hours_utc: Some(HoursUtc { start: 22, end: 6 }),
            }),
        },
    ];
    let mut k = sample_key(&t.tenant_id, "ab01");
    k.grants = granted.clone();
    store.insert_key(&k, -1).await.unwrap();
    assert_eq!(store.key_by_hash("ab01").await.unwrap().as_ref(), Some(&k));
    k.previous_hash = Some(k.hash.clone());
    k.hash = "ab02".into();
    store.update_key(&k).await.unwrap();
    let rotated = store.key_by_hash("ab02").await.unwrap().unwrap();
    assert_eq!(rotated.grants, granted, "a rotation keeps the grants");
    let listed = store.list_keys(&t.tenant_id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].grants, granted);

    let mut u = User {
        user_id: "granted".into(),
        tenant_id: t.tenant_id.clone(),
        email: "granted@example.com".into(),
        roles: vec!["viewer".into()],
        grants: granted.clone(),
        status: UserStatus::Active,
        updated_at: model::now(),
    };
    store.put_user(&u, -1).await.unwrap();
    assert_eq!(
        store
            .get_user(&t.tenant_id, "granted")
            .await
            .unwrap()
            .as_ref(),
        Some(&u)
    );
    // Replacing the user replaces its grants (here: none left).
    u.grants.clear();
    store.put_user(&u, -1).await.unwrap();
    let got = store
        .get_user(&t.tenant_id, "granted")
        .await
        .unwrap()
        .unwrap();
    assert!(got.grants.is_empty());
    assert_eq!(store.list_users(&t.tenant_id).await.unwrap(), vec![u]);
}

async fn users_and_limits(store: &dyn Store) {
    let t = sample_tenant(Tier::Free);
    store.insert_tenant(&t).await.unwrap();
    let user = |id: &str| User {
        user_id: id.into(),
        tenant_id: t.tenant_id.clone(),
        email: format!("{id}@example.com"),
        roles: vec!["viewer".into()],
        grants: vec![],
        status: UserStatus::Active,
        updated_at: model::now(),
    };
    assert!(store.put_user(&user("u1"), 2).await.unwrap(), "created");
    assert!(!store.put_user(&user("u1"), 2).await.unwrap(), "replaced");
    assert!(store.put_user(&user("u2"), 2).await.unwrap());
    assert!(matches!(
        store.put_user(&user("u3"), 2).await,
        Err(StoreError::LimitReached { .. })
    ));
    assert!(
        !store.put_user(&user("u2"), 2).await.unwrap(),
        "replacing at the limit is fine"
    );
    assert_eq!(store.list_users(&t.tenant_id).await.unwrap().len(), 2);
    assert!(store.delete_user(&t.tenant_id, "u1").await.unwrap());
    assert!(!store.delete_user(&t.tenant_id, "u1").await.unwrap());
    let tombstone = store.get_user(&t.tenant_id, "u1").await.unwrap().unwrap();
    assert_eq!(
        tombstone.status,
        UserStatus::Deleted,
        "a deleted user is remembered"
    );
    assert!(tombstone.roles.is_empty());
    assert!(
        !store
            .list_users(&t.tenant_id)
            .await
            .unwrap()
            .iter()
            .any(|u| u.user_id == "u1"),
        "but not listed"
    );
    assert!(
        store.put_user(&user("u3"), 2).await.unwrap(),
        "room again after a delete"
    );
    assert!(
        matches!(
            store.put_user(&user("u1"), 2).await,
            Err(StoreError::LimitReached { .. })
        ),
        "bringing a deleted user back counts as a creation"
    );
    assert!(store.delete_user(&t.tenant_id, "u3").await.unwrap());
    assert!(store.put_user(&user("u1"), 2).await.unwrap(), "back");
    assert_eq!(
        store
            .get_user(&t.tenant_id, "u1")
            .await
            .unwrap()
            .unwrap()
            .status,
        UserStatus::Active
    );
}

fn requests(tenant_id: &str, day: u32) -> UsageKey {
    UsageKey {
        tenant_id: tenant_id.into(),
        counter: Counter::Requests { day },
    }
}

fn spend(tenant_id: &str, month: u32, project: Option<&str>) -> UsageKey {
    UsageKey {
        tenant_id: tenant_id.into(),
        counter: Counter::Spend {
            month,
            project: project.map(Into::into),
        },
    }
}

async fn usage(store: &dyn Store) {
    let t = sample_tenant(Tier::Free);
    let id = t.tenant_id.as_str();
    store.insert_tenant(&t).await.unwrap();
    assert_eq!(store.usage(&requests(id, 20_000)).await.unwrap(), 0);
    store
        .add_usage(&[
            (requests(id, 20_000), 5),
            (spend(id, 24_322, None), 250_000),
        ])
        .await
        .unwrap();
    store
        .add_usage(&[
            (requests(id, 20_000), 7),
            (requests(id, 20_001), 1),
            (spend(id, 24_322, Some("proj-1")), 1),
            (spend(id, 24_322, None), 1),
        ])
        .await
        .unwrap();
    assert_eq!(store.usage(&requests(id, 20_000)).await.unwrap(), 12);
    assert_eq!(store.usage(&requests(id, 20_001)).await.unwrap(), 1);
    assert_eq!(
        store.usage(&spend(id, 24_322, None)).await.unwrap(),
        250_001
    );
    assert_eq!(
        store
            .usage(&spend(id, 24_322, Some("proj-1")))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.usage(&spend(id, 24_323, None)).await.unwrap(), 0);
    assert_eq!(
        store
            .usage(&spend(id, 24_322, Some("proj-2")))
            .await
            .unwrap(),
        0
    );
}

fn role(tenant_id: &str, name: &str, perms: &[&str]) -> CustomRole {
    CustomRole {
        tenant_id: tenant_id.into(),
        name: name.into(),
        description: "conformance".into(),
        permissions: perms.iter().map(|p| p.to_string()).collect(),
        updated_at: model::now(),
    }
}

async fn roles(store: &dyn Store) {
    let t = sample_tenant(Tier::Standard);
    store.insert_tenant(&t).await.unwrap();
    assert!(
        store
            .put_role(&role(&t.tenant_id, "auditor", &["view_audit_logs"]))
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_role(&role(
                &t.tenant_id,
                "auditor",
                &["view_audit_logs", "view_costs"]
            ))
            .await
            .unwrap()
    );
    store
        .put_role(&role(&t.tenant_id, "billing", &["export_costs"]))
        .await
        .unwrap();
    let listed = store.list_roles(&t.tenant_id).await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["auditor", "billing"]
    );
    assert_eq!(listed[0].permissions, ["view_audit_logs", "view_costs"]);
    assert!(
        store.list_roles("org-00000000").await.unwrap().is_empty(),
        "roles are per tenant"
    );
    assert!(store.delete_role(&t.tenant_id, "billing").await.unwrap());
    assert!(!store.delete_role(&t.tenant_id, "billing").await.unwrap());
}

async fn cascade(store: &dyn Store) {
    let t = sample_tenant(Tier::Standard);
    store.insert_tenant(&t).await.unwrap();
    let mut k = sample_key(&t.tenant_id, "cc01");
    k.previous_hash = Some("cc00".into());
    store.insert_key(&k, -1).await.unwrap();
    store.update_key(&k).await.unwrap();
    store
        .insert_project(&project(&t.tenant_id, "p"), -1)
        .await
        .unwrap();
    store
        .add_usage(&[
            (requests(&t.tenant_id, 1), 1),
            (spend(&t.tenant_id, 1, Some("p")), 1),
        ])
        .await
        .unwrap();
    let removed = store.delete_tenant(&t.tenant_id).await.unwrap();
    let mut hashes = removed.key_hashes.clone();
    hashes.sort();
    assert_eq!(hashes, ["cc00", "cc01"]);
    assert!(store.get_tenant(&t.tenant_id).await.unwrap().is_none());
    assert!(store.key_by_hash("cc01").await.unwrap().is_none());
    assert!(store.list_keys(&t.tenant_id).await.unwrap().is_empty());
    assert!(store.list_projects(&t.tenant_id).await.unwrap().is_empty());
    assert!(store.list_roles(&t.tenant_id).await.unwrap().is_empty());
    assert_eq!(store.usage(&requests(&t.tenant_id, 1)).await.unwrap(), 0);
    assert_eq!(
        store
            .usage(&spend(&t.tenant_id, 1, Some("p")))
            .await
            .unwrap(),
        0
    );
    assert!(matches!(
        store.delete_tenant(&t.tenant_id).await,
        Err(StoreError::NotFound(_))
    ));
}

/// A session of `tenant_id` whose cookie hashes to `token_hash`.
pub fn sample_session(tenant_id: &str, session_id: &str, token_hash: &str) -> Session {
    let now = model::now();
    Session {
        session_id: session_id.into(),
        token_hash: token_hash.into(),
        tenant_id: tenant_id.into(),
        user_id: "alice".into(),
        email: Some("alice@conformance.example".into()),
        roles: vec!["viewer".into()],
        auth_method: "oidc".into(),
        provider: "corp".into(),
        created_at: now,
        expires_at: now + Duration::hours(8),
        last_seen: now,
        refresh_at: None,
        refresh_token: Some("rt".into()),
        id_token: None,
    }
}

async fn sessions(store: &dyn Store) {
    let t = sample_tenant(Tier::Enterprise);
    store.insert_tenant(&t).await.unwrap();
    let mut s = sample_session(&t.tenant_id, "sess-0000000000000001", "dd00");
    store.put_session(&s).await.unwrap();
    assert_eq!(
        store.session_by_token("dd00").await.unwrap(),
        Some(s.clone())
    );
    assert!(store.session_by_token("dd01").await.unwrap().is_none());
    s.roles = vec!["admin".into()];
    assert!(
        store.update_session(&s).await.unwrap(),
        "update of a live session"
    );
    assert_eq!(
        store.session_by_token("dd00").await.unwrap().unwrap().roles,
        ["admin"]
    );
    let other = sample_session(&t.tenant_id, "sess-0000000000000002", "dd02");
    store.put_session(&other).await.unwrap();
    let listed = store.list_sessions(&t.tenant_id).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        store
            .delete_session(&t.tenant_id, &s.session_id)
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_session(&t.tenant_id, &s.session_id)
            .await
            .unwrap()
    );
    assert!(store.session_by_token("dd00").await.unwrap().is_none());
    // A late update never brings an ended session back.
    assert!(
        !store.update_session(&s).await.unwrap(),
        "update of an ended session"
    );
    assert!(store.session_by_token("dd00").await.unwrap().is_none());
    // Activity moves last_seen forward only, and never brings a session back.
    let later = other.last_seen + Duration::minutes(5);
    store
        .touch_session(&t.tenant_id, &other.session_id, later)
        .await
        .unwrap();
    store
        .touch_session(&t.tenant_id, &other.session_id, other.last_seen)
        .await
        .unwrap();
    assert_eq!(
        store
            .session_by_token("dd02")
            .await
            .unwrap()
            .unwrap()
            .last_seen,
        later
    );
    store
        .touch_session(&t.tenant_id, &s.session_id, later)
        .await
        .unwrap();
    assert!(store.session_by_token("dd00").await.unwrap().is_none());
    // The sweep removes sessions past their lifetime or idle too long.
    let mut old = sample_session(&t.tenant_id, "sess-0000000000000003", "dd03");
    old.last_seen -= Duration::hours(2);
    store.put_session(&old).await.unwrap();
    let idle = std::time::Duration::from_secs(3600);
    assert_eq!(store.sweep_sessions(model::now(), idle).await.unwrap(), 1);
    assert!(store.session_by_token("dd03").await.unwrap().is_none());
    assert!(store.session_by_token("dd02").await.unwrap().is_some());
    let end_of_all = model::now() + Duration::hours(9);
    assert_eq!(store.sweep_sessions(end_of_all, idle).await.unwrap(), 1);
    store.put_session(&other).await.unwrap();
    // Deleting the tenant ends its sessions.
    store.delete_tenant(&t.tenant_id).await.unwrap();
    assert!(store.session_by_token("dd02").await.unwrap().is_none());
    assert!(store.list_sessions(&t.tenant_id).await.unwrap().is_empty());
}

async fn remembered(store: &dyn Store) {
    let now = model::now().unix_timestamp();
    assert!(store.remember_once("saml:a", now + 60).await.unwrap());
    assert!(
        !store.remember_once("saml:a", now + 60).await.unwrap(),
        "a replay"
    );
    assert!(store.remember_once("saml:b", now + 60).await.unwrap());
    // Once its time passed the key may be used again, and the sweep drops it.
    assert!(store.remember_once("saml:old", now - 1).await.unwrap());
    assert!(store.remember_once("saml:old", now - 1).await.unwrap());
    assert_eq!(store.sweep_remembered(now).await.unwrap(), 1);
    assert!(!store.remember_once("saml:a", now + 60).await.unwrap());
    // Concurrent callers: exactly one wins.
    let wins = racing_remembers(store, "saml:race").await;
    assert_eq!(wins, 1);
}

async fn racing_remembers(store: &dyn Store, key: &str) -> usize {
    let now = model::now().unix_timestamp();
    let (a, b, c) = tokio::join!(
        store.remember_once(key, now + 60),
        store.remember_once(key, now + 60),
        store.remember_once(key, now + 60)
    );
    [a, b, c]
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count()
}
