use serde_json::json;

use super::*;
use crate::audit::{GENESIS, RequestDetails, Severity};

const KEY: &[u8] = b"subject-test-key-0123456789";

fn record(details: Details, user: &str) -> Record {
    let mut r = Record {
        seq: 3,
        event_id: "e".into(),
        timestamp: "2026-12-06T00:00:00Z".into(),
        event_type: "user.created".into(),
        user_id: user.into(),
        tenant_id: "org-1".into(),
        region: Some("eu".into()),
        details,
        ip_address: "10.0.0.7".into(),
        user_agent: "curl/8 \"x\"".into(),
        severity: Severity::Medium,
        request_id: "r".into(),
        subject_digest: None,
        subject_salt: None,
        subject_seal: None,
        prev_hash: GENESIS.into(),
        hash: String::new(),
    };
    let salt = Salts::new().unwrap().next_salt();
    r.subject_digest = Some(digest(&salt, &r));
    r.subject_salt = Some(hex(&salt));
    r
}

fn admin_details(user: &str, email: &str) -> Details {
    Details::Json(json!({
        "action": format!("PUT /admin/v1/tenants/org-1/users/{user}"),
        "actor": "admin-token",
        "target": {"user_id": user},
        "changes": {"email": email, "roles": ["viewer"]},
        "outcome": "success",
    }))
}

fn request_details() -> Details {
    Details::Request(Box::new(RequestDetails {
        auth_method: Some("jwt"),
        decision: "allow",
        method: http::Method::GET,
        path: "/v1/tenants/org-1/costs".into(),
        permission: Some("view_costs"),
        reason: None,
        route: Some("routes.toml:9".into()),
        status: None,
    }))
}

/// Writes `r` as the writer does and reads it back as `verify` does.
fn written(r: &Record) -> Record {
    let mut out = Vec::new();
    let hash = r.append_to(&mut out);
    let back: Record = serde_json::from_slice(&out).unwrap();
    assert_eq!(back.hash, hash);
    back
}

fn target<'a>(user: &'a str, email: &'a str, p: &'a str) -> Target<'a> {
    Target {
        tenant_id: "org-1",
        user_id: user,
        email: Some(email),
        pseudonym: p,
    }
}

/// Both writer paths (the request path's cut-out hash and the admin
/// records' canonical one) hash what `verify` recomputes, and the hash
/// does not cover the personal fields themselves.
#[test]
fn the_chained_form_verifies_and_commits_through_the_digest() {
    for r in [
        record(request_details(), "alice"),
        // JSON details without a personal field: the cut-out path too.
        record(
            Details::Json(json!({"path": "/v1/x", "i": 1, "target": {"key_id": "k"}})),
            "alice",
        ),
        record(admin_details("alice", "alice@example.com"), "admin-token"),
    ] {
        let back = written(&r);
        assert_eq!(back.compute_hash(), back.hash);
        assert_eq!(check(&back, None), Ok(Subject::Live));
        assert_eq!(check(&back, Some(KEY)), Ok(Subject::Live));
        // The canonical form holds no personal value and no salt.
        let canonical = String::from_utf8(back.canonical()).unwrap();
        assert!(!canonical.contains("10.0.0.7"), "{canonical}");
        assert!(!canonical.contains("curl/8"), "{canonical}");
        assert!(!canonical.contains("subject_salt"), "{canonical}");
        assert!(canonical.contains("subject_digest"), "{canonical}");
        // A changed personal field keeps the chain hash but fails the digest.
        let mut tampered = back.clone();
        tampered.ip_address = "10.0.0.8".into();
        assert_eq!(tampered.compute_hash(), back.hash);
        assert!(check(&tampered, None).is_err());
        // A changed non-personal field breaks the chain hash.
        let mut tampered = back.clone();
        tampered.event_type = "user.deleted".into();
        assert_ne!(tampered.compute_hash(), back.hash);
    }
}

/// A record without the subject fields (written before them) is hashed
/// over its whole line, as before.
#[test]
fn legacy_records_keep_the_whole_line_hash() {
    let mut r = record(admin_details("bob", "bob@example.com"), "admin-token");
    r.subject_digest = None;
    r.subject_salt = None;
    let back = written(&r);
    let line = serde_json::to_vec(&Record {
        hash: String::new(),
        ..back.clone()
    })
    .unwrap();
    assert_eq!(
        hex(&crate::model::sha256(&line)),
        back.hash,
        "the old form: SHA-256 of the line with hash empty"
    );
    assert_eq!(check(&back, None), Ok(Subject::Legacy));
    // A legacy record with a salt bolted on is refused.
    let mut bolted = back.clone();
    bolted.subject_salt = Some("00".into());
    assert!(check(&bolted, None).is_err());
    // Erasure leaves it as it is (and says so).
    let mut erased = back.clone();
    let p = pseudonym(KEY, "org-1", "bob");
    assert_eq!(
        erase(&mut erased, &target("bob", "bob@example.com", &p), KEY),
        Erased::Legacy
    );
    assert_eq!(erased, back);
}

#[test]
fn erasure_pseudonymises_keeps_the_chain_and_is_sealed() {
    let p = pseudonym(KEY, "org-1", "alice");
    assert!(p.starts_with("erased-") && p.len() == 23, "{p}");
    assert_eq!(p, pseudonym(KEY, "org-1", "alice"), "stable");
    assert_ne!(p, pseudonym(KEY, "org-2", "alice"), "per tenant");
    assert_ne!(p, pseudonym(b"another-key-0123456789", "org-1", "alice"));
    let t = target("alice", "alice@example.com", &p);

    // The user's own request record: id, address and agent go.
    let own = written(&record(request_details(), "alice"));
    let mut e = own.clone();
    assert_eq!(erase(&mut e, &t, KEY), Erased::Changed);
    let line = serde_json::to_string(&e).unwrap();
    for plain in ["alice", "10.0.0.7", "curl/8"] {
        assert!(!line.contains(plain), "{plain} in {line}");
    }
    assert_eq!(e.user_id, p);
    assert_eq!(e.subject_salt, None);
    assert_eq!(e.compute_hash(), own.hash, "the chain hash is unchanged");
    assert_eq!(check(&e, None), Ok(Subject::Erased));
    assert_eq!(check(&e, Some(KEY)), Ok(Subject::Erased));
    // Idempotent.
    let mut again = e.clone();
    assert_eq!(erase(&mut again, &t, KEY), Erased::Untouched);
    assert_eq!(again, e);

    // An admin record about the user: target, email, action; the admin's
    // own address stays.
    let about = written(&record(
        admin_details("alice", "alice@example.com"),
        "admin-token",
    ));
    let mut e = about.clone();
    assert_eq!(erase(&mut e, &t, KEY), Erased::Changed);
    let line = serde_json::to_string(&e).unwrap();
    assert!(!line.contains("alice"), "{line}");
    assert!(line.contains(&format!("/users/{p}")), "{line}");
    assert_eq!(e.user_id, "admin-token");
    assert_eq!(e.ip_address, "10.0.0.7");
    assert_eq!(e.compute_hash(), about.hash);
    assert_eq!(check(&e, Some(KEY)), Ok(Subject::Erased));

    // Another user's record is untouched.
    let other = written(&record(
        admin_details("bob", "bob@example.com"),
        "admin-token",
    ));
    let mut e2 = other.clone();
    assert_eq!(erase(&mut e2, &t, KEY), Erased::Untouched);
    assert_eq!(e2, other);

    // Tampering with an erased record: the pseudonym (caught with the
    // key), the digest (caught by the chain, key or not).
    let mut bad = e.clone();
    bad.details = Details::Json({
        let Details::Json(mut v) = e.details.clone() else {
            unreachable!()
        };
        v["target"]["user_id"] = json!("erased-0000000000000000");
        v
    });
    assert!(check(&bad, Some(KEY)).is_err());
    let mut bad = e.clone();
    bad.subject_digest = Some("0".repeat(64));
    assert_ne!(bad.compute_hash(), e.hash);
    // A live record's salt swapped for a made-up seal to pass off altered
    // fields: caught with the key; without it, the missing salt alone is
    // not enough to pass.
    let mut forged = other.clone();
    forged.subject_salt = None;
    assert!(check(&forged, None).is_err());
    forged.user_id = "mallory".into();
    forged.subject_seal = Some("00".repeat(16));
    assert!(check(&forged, Some(KEY)).is_err());
}

#[test]
fn salts_differ() {
    let mut s = Salts::new().unwrap();
    let a = s.next_salt();
    let b = s.next_salt();
    let c = s.next_salt();
    assert!(a != b && b != c && a != c);
    assert_ne!(Salts::new().unwrap().next_salt(), a);
}
