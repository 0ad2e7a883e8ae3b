//! GDPR erasure (issue 20): deleting a user pseudonymises their identifiers
//! in the audit log (files, rotated files, the query index, the admin
//! query) while `costguard audit verify` still passes, with and without
//! the key, and still catches every other change.
//!
//! The user makes request records of their own with bearer tokens (an
//! HS256 provider keyed with a local secret: no identity-provider peer
//! needed), and admin records name them (`user.created`/`user.updated`
//! with their email, `user.deleted`).

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::audit::{get, log_files, records, start, verify};
use support::{Sidecar, Upstream};

const USER: &str = "alice-7f3a";
const EMAIL: &str = "alice.7f3a@erasure.example";
const OLD_EMAIL: &str = "old.alice.7f3a@erasure.example";
const AGENT: &str = "alice-agent-7f3a/1.0";
const OTHER: &str = "bob-8e2c";
const OTHER_AGENT: &str = "bob-agent-8e2c/1.0";
const SECRET: &str = "an-hs256-shared-secret-of-more-than-32-bytes";
const ISSUER: &str = "http://127.0.0.1:9/";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An HS256 access token for `sub` in `tenant`.
fn token(sub: &str, tenant: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let claims = json!({
        "iss": ISSUER, "aud": "cg-hs", "sub": sub, "exp": now + 600, "iat": now,
        "tenant_id": tenant, "roles": ["viewer"],
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

fn config(dir: &Path) -> String {
    let secret = dir.join("hs.secret");
    std::fs::write(&secret, SECRET).unwrap();
    format!(
        "[audit]\nmax_file_bytes = 4096\nbatch_interval = \"1ms\"\n\
         [[sso.oidc]]\nname = \"hs\"\nissuer = \"{ISSUER}\"\nclient_id = \"cg-hs\"\n\
         redirect_url = \"http://127.0.0.1:9/auth/callback\"\n\
         tenant_claim = \"tenant_id\"\nroles_claim = \"roles\"\nalgorithms = [\"HS256\"]\n\
         hs256_secret_file = \"{}\"\n",
        secret.display()
    )
}

/// Every log file's lines, in order.
fn lines(log: &Path) -> Vec<String> {
    log_files(log)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                found.push(p);
            }
        }
    }
    found
}

/// A copy of the log's files in a fresh `audit` directory; with
/// `with_key`, the key beside it (where `verify` looks for it).
fn copy_log(from: &Path, to: &Path, with_key: bool) -> PathBuf {
    let audit = to.join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), audit.join(e.file_name())).unwrap();
        }
    }
    if with_key {
        std::fs::copy(
            from.parent().unwrap().join("audit-hmac.key"),
            to.join("audit-hmac.key"),
        )
        .unwrap();
    }
    audit
}

/// Makes the new text of a line to damage (empty: remove it), or `None`.
type Damage<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Rewrites the first line of the log (in a copy) for which `f` returns a
/// new line.
fn damage(log: &Path, f: Damage<'_>) {
    for file in log_files(log) {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut out = Vec::new();
        let mut done = false;
        for line in text.lines() {
            match (!done).then(|| f(line)).flatten() {
                Some(new) => {
                    done = true;
                    if !new.is_empty() {
                        out.push(new);
                    }
                }
                None => out.push(line.to_string()),
            }
        }
        if done {
            std::fs::write(&file, out.join("\n") + "\n").unwrap();
            return;
        }
    }
    panic!("no line to damage");
}

fn admin_get(cg: &Sidecar, path: &str) -> Value {
    let (status, body) = cg.admin("GET", path, None);
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_user_pseudonymises_them_and_the_log_still_verifies() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data");
    let cg = start(&up, &store, &config(dir.path()));
    let log = store.join("audit");
    let t = cg.create_tenant("enterprise");
    let user_path = format!("/admin/v1/tenants/{t}/users/{USER}");
    for (email, status) in [(OLD_EMAIL, 201), (EMAIL, 200)] {
        let (s, body) = cg.admin(
            "PUT",
            &user_path,
            Some(json!({"email": email, "roles": ["viewer"]})),
        );
        assert_eq!(s, status, "{body}");
    }
    let (s, body) = cg.admin(
        "PUT",
        &format!("/admin/v1/tenants/{t}/users/{OTHER}"),
        Some(json!({"email": "bob.8e2c@erasure.example", "roles": ["viewer"]})),
    );
    assert_eq!(s, 201, "{body}");
    let costs = format!("/v1/tenants/{t}/costs");
    for (who, agent, n) in [(USER, AGENT, 30), (OTHER, OTHER_AGENT, 10)] {
        let bearer = token(who, &t);
        for _ in 0..n {
            let r = get(
                &cg,
                &costs,
                &format!("Authorization: Bearer {bearer}\r\nUser-Agent: {agent}\r\n"),
            );
            assert_eq!(r.status, 200, "{r:?}");
        }
    }
    // A bob-made record right before the deletion, in the file being written.
    let _ = admin_get(&cg, &format!("/admin/v1/audit?tenant_id={t}&limit=1"));
    let before = lines(&log);
    let own = records(&log)
        .iter()
        .filter(|r| r["user_id"] == USER)
        .count();
    assert!(own >= 30, "{own} records of the user");
    let files = log_files(&log).len();
    assert!(files >= 4, "erasure spans several files: {files}");
    // Every line that names nobody erased (bob's included).
    let untouched: Vec<&String> = before
        .iter()
        .filter(|l| !l.contains(USER) && !l.contains("7f3a"))
        .collect();
    assert!(untouched.iter().any(|l| l.contains(OTHER_AGENT)));

    let (status, body) = cg.admin("DELETE", &user_path, None);
    assert_eq!(status, 200, "{body}");
    let erasure = &body["audit_erasure"];
    let pseudonym = erasure["pseudonym"].as_str().unwrap().to_string();
    assert!(pseudonym.starts_with("erased-") && pseudonym.len() == 23);
    assert!(
        erasure["records_pseudonymised"].as_u64().unwrap() >= own as u64 + 2,
        "{own} own: {body}"
    );
    assert!(erasure["files_rewritten"].as_u64().unwrap() >= 2, "{body}");
    assert_eq!(erasure["legacy_records_left"], 0, "{body}");

    // The deleted user's token is refused from now on, and the refusal's
    // record (anonymous: no user, no tenant) does not bring their id back
    // (checked below with the rest).
    let r = get(
        &cg,
        &costs,
        &format!(
            "Authorization: Bearer {}\r\nUser-Agent: after-erasure/1.0\r\n",
            token(USER, &t)
        ),
    );
    assert_eq!(r.status, 401, "{r:?}");
    let _ = admin_get(&cg, &format!("/admin/v1/audit?tenant_id={t}&limit=1"));
    // No plaintext left anywhere under the audit directory (files, the
    // index, the head): not the id, not either email, not the agent.
    for needle in [USER, EMAIL, OLD_EMAIL, AGENT] {
        assert_eq!(
            files_containing(&log, needle),
            Vec::<PathBuf>::new(),
            "{needle}"
        );
    }
    // Outside the audit directory, only the store's files keep the id and
    // email: the user's tombstone (status `deleted`), by design.
    for needle in [USER, EMAIL] {
        for f in files_containing(&store, needle) {
            assert!(!f.starts_with(&log), "{}", f.display());
        }
    }
    let after = lines(&log);
    // The other lines are byte for byte what they were, in order.
    let kept: Vec<&String> = after.iter().filter(|l| untouched.contains(l)).collect();
    assert_eq!(kept, untouched);
    // The user's records are there under the pseudonym, with no address
    // or agent.
    let recs = records(&log);
    let theirs: Vec<&Value> = recs
        .iter()
        .filter(|r| r["user_id"] == pseudonym.as_str())
        .collect();
    assert_eq!(theirs.len(), own);
    assert!(
        theirs.iter().all(|r| r["ip_address"] == ""
            && r["user_agent"] == ""
            && r["subject_seal"].is_string())
    );
    // The admin records about them name the pseudonym; the deletion's
    // record too, with the erasure's counts.
    let deleted: Vec<&Value> = recs
        .iter()
        .filter(|r| r["event_type"] == "user.deleted")
        .collect();
    assert_eq!(deleted.len(), 1);
    let d = &deleted[0]["details"];
    assert_eq!(
        d["action"],
        format!("DELETE /admin/v1/tenants/{t}/users/{pseudonym}")
    );
    assert_eq!(d["target"]["user_id"], pseudonym.as_str());
    assert_eq!(d["erasure"]["pseudonym"], pseudonym.as_str());
    let about: Vec<&Value> = recs
        .iter()
        .filter(|r| r["details"]["target"]["user_id"] == pseudonym.as_str())
        .collect();
    assert!(about.len() >= 3, "created, updated, deleted: {about:?}");

    // verify: with the key (found beside the directory) and without.
    let (code, out) = verify(&log);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("erased records, seals verified"), "{out}");
    let work = tempfile::tempdir().unwrap();
    let keyless = copy_log(&log, work.path(), false);
    let (code, out) = verify(&keyless);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("seals NOT checked"), "{out}");

    // The admin query: by the pseudonym, the records; by the old id, none.
    let by_pseudonym = admin_get(
        &cg,
        &format!("/admin/v1/audit?tenant_id={t}&user_id={pseudonym}&limit=1000"),
    );
    assert_eq!(by_pseudonym["count"].as_u64().unwrap(), own as u64);
    let by_id = admin_get(
        &cg,
        &format!("/admin/v1/audit?tenant_id={t}&user_id={USER}&limit=1000"),
    );
    assert_eq!(by_id["count"], 0, "{by_id}");
    let all = admin_get(&cg, &format!("/admin/v1/audit?tenant_id={t}&limit=1000"));
    let text = all.to_string();
    assert!(!text.contains(USER) && !text.contains(EMAIL), "{text}");
    // Records read back through the index are whole (offsets moved).
    assert!(
        all["records"].as_array().unwrap().len() >= before.len() / 2,
        "{all}"
    );

    // Deleting again: 404, and the erasure run again changes nothing.
    let snapshot = lines(&log);
    let (status, _) = cg.admin("DELETE", &user_path, None);
    assert_eq!(status, 404);
    let again = lines(&log);
    assert_eq!(again[..snapshot.len()], snapshot[..]);
    assert!(
        again[snapshot.len()..]
            .iter()
            .all(|l| !l.contains(USER) && l.contains(&pseudonym)),
        "the failed delete's record names the pseudonym only"
    );

    // Tampering, on copies: each is caught.
    let cases: [(&str, Damage<'_>, &str); 6] = [
        (
            "another user's id",
            &|l| {
                l.contains(&format!("\"user_id\":\"{OTHER}\""))
                    .then(|| l.replacen(OTHER, "mallory-0000", 1))
            },
            "subject digest mismatch",
        ),
        (
            "a route",
            &|l| {
                l.contains("\"path\":\"/v1/tenants/")
                    .then(|| l.replacen("/costs", "/budget", 1))
            },
            "hash mismatch",
        ),
        (
            "a deleted line",
            &|l| l.contains(OTHER_AGENT).then(String::new),
            "sequence jumps",
        ),
        (
            "an erased record's pseudonym",
            &|l| {
                l.contains(&format!("\"user_id\":\"{pseudonym}\""))
                    .then(|| l.replacen(&pseudonym, "erased-0000000000000000", 1))
            },
            "erasure seal mismatch",
        ),
        (
            "an erased record's digest",
            &|l| {
                l.contains("subject_seal").then(|| {
                    let at = l.find("\"subject_digest\":\"").unwrap() + 18;
                    let flipped = if &l[at..at + 1] == "0" { "1" } else { "0" };
                    format!("{}{flipped}{}", &l[..at], &l[at + 1..])
                })
            },
            "hash mismatch",
        ),
        (
            "a live record's salt stripped to pass it off as erased",
            &|l| {
                l.contains(OTHER_AGENT).then(|| {
                    let v: Value = serde_json::from_str(l).unwrap();
                    let salt = v["subject_salt"].as_str().unwrap();
                    l.replacen(
                        &format!("\"subject_salt\":\"{salt}\""),
                        &format!("\"subject_seal\":\"{}\"", "0".repeat(32)),
                        1,
                    )
                    .replacen(OTHER_AGENT, "", 1)
                })
            },
            "erasure seal mismatch",
        ),
    ];
    for (name, f, expect) in cases {
        let work = tempfile::tempdir().unwrap();
        let copy = copy_log(&log, work.path(), true);
        damage(&copy, f);
        let (code, out) = verify(&copy);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(
            out.starts_with("BROKEN") && out.contains(expect),
            "{name}: {out}"
        );
    }
}
