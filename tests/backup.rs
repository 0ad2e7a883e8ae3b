//! `costguard backup` and `costguard restore` through the real binary: an
//! online backup taken while proxied requests and admin writes run, restored
//! into a new data directory, served by a new instance that still knows
//! every tenant, key, project, user, role and session of the snapshot, with
//! an audit chain that verifies and keeps growing; and the refusals (a
//! tampered or truncated backup, a non-empty target, a caller without
//! system_admin, the shared PostgreSQL store).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use costguard::model::{Session, hex, sha256};
use costguard::store::Store;
use costguard::store::sled::SledStore;
use serde_json::{Value, json};
use support::{ADMIN_TOKEN, Sidecar, Upstream, cli, config_for, get_as, raw_request, test_pki};

/// An admin call to the admin port at `addr` as the bootstrap admin.
fn admin(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
    );
    if !body.is_empty() || (method != "GET" && method != "DELETE") {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let resp = raw_request(addr, req.as_bytes());
    (
        resp.status,
        serde_json::from_str(&resp.body).unwrap_or(Value::Null),
    )
}

/// A `[[sso.saml]]` provider that needs no running IdP (its certificate is
/// a file), so session cookies authenticate.
fn saml_config(dir: &Path) -> String {
    let cert = dir.join("idp.pem");
    std::fs::write(&cert, test_pki().1).unwrap();
    format!(
        "[[sso.saml]]\nname = \"corp\"\nidp_entity_id = \"https://idp.test/saml\"\n\
         idp_sso_url = \"https://idp.test/saml/sso\"\nidp_cert_file = \"{}\"\n\
         sp_entity_id = \"http://127.0.0.1/auth/saml/metadata\"\n\
         acs_url = \"http://127.0.0.1/auth/saml/acs\"\ntenant_attribute = \"tenant_id\"\n\
         roles_attribute = \"roles\"\n",
        cert.display()
    )
}

/// A signed-in user's session, written into a stopped server's store (as a
/// SAML login would): returns the cookie's secret.
async fn add_session(data: &Path, tenant: &str) -> String {
    let store = SledStore::open(data).unwrap();
    let cookie = "backup-test-session-cookie-0123456789abcdef".to_string();
    let now = costguard::model::now();
    let session = Session {
        session_id: "sess-00112233aabbccdd".into(),
        token_hash: hex(&sha256(cookie.as_bytes())),
        tenant_id: tenant.into(),
        user_id: "alice@acme.example".into(),
        email: Some("alice@acme.example".into()),
        roles: vec!["viewer".into()],
        auth_method: "saml".into(),
        provider: "corp".into(),
        created_at: now,
        expires_at: now + time::Duration::hours(8),
        last_seen: now,
        refresh_at: None,
        refresh_token: None,
        id_token: None,
    };
    store.put_session(&session).await.unwrap();
    store.flush().await.unwrap();
    cookie
}

fn wait_ready(cg: &Sidecar) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = raw_request(
            cg.admin,
            b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        if r.status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {}", r.body);
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ids(list: &Value, field: &str) -> Vec<String> {
    let items = list
        .as_array()
        .or_else(|| {
            list.as_object()
                .and_then(|o| o.values().find_map(|v| v.as_array()))
        })
        .unwrap_or_else(|| panic!("not a list: {list}"));
    let mut out: Vec<String> = items
        .iter()
        .map(|x| x[field].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

/// Everything the admin API shows of the tenants in `tenants`: (tenants,
/// per tenant: keys, projects, users, roles, sessions).
fn inventory(addr: std::net::SocketAddr, tenants: &[String]) -> Vec<(String, [Vec<String>; 5])> {
    tenants
        .iter()
        .map(|t| {
            let list = |what: &str, field: &str| {
                let (status, body) =
                    admin(addr, "GET", &format!("/admin/v1/tenants/{t}/{what}"), None);
                assert_eq!(status, 200, "{what}: {body}");
                ids(&body, field)
            };
            (
                t.clone(),
                [
                    list("keys", "key_id"),
                    list("projects", "project_id"),
                    list("users", "user_id"),
                    list("roles", "name"),
                    list("sessions", "session_id"),
                ],
            )
        })
        .collect()
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_every_record_into_a_new_instance() {
    let up = Upstream::start().await;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("old").join("data");
    let sso = saml_config(work.path());
    let config = config_for(
        &up.url(),
        &format!(
            "[rate_limit]\nfailed_auth_per_minute = 100000\nstandard = \"unlimited\"\nenterprise = \"unlimited\"\n{sso}"
        ),
    );

    // A tenant first, then a session of it (as a SAML login writes one).
    let mut cg = Sidecar::start_with_store(&config, &[], Some(&data));
    let first = cg.create_tenant("enterprise");
    cg.terminate();
    cg.wait(Duration::from_secs(20));
    let cookie = add_session(&data, &first).await;

    let cg = Sidecar::start_with_store(&config, &[], Some(&data));
    let mut tenants = vec![first.clone(), cg.create_tenant("standard")];
    let mut secrets = Vec::new();
    for t in &tenants {
        for roles in [&["viewer"][..], &["admin"][..]] {
            secrets.push((t.clone(), cg.create_key(t, roles).1));
        }
        let (s, b) = cg.admin(
            "POST",
            &format!("/admin/v1/tenants/{t}/projects"),
            Some(json!({"name": "web", "budget": 100.0})),
        );
        assert_eq!(s, 201, "{b}");
        let (s, b) = cg.admin(
            "PUT",
            &format!("/admin/v1/tenants/{t}/users/bob"),
            Some(json!({"email": "bob@acme.example", "roles": ["analyst"]})),
        );
        assert_eq!(s, 201, "{b}");
        let (s, b) = cg.admin(
            "PUT",
            &format!("/admin/v1/tenants/{t}/roles/auditor"),
            Some(json!({"description": "reads costs", "permissions": ["view_costs"]})),
        );
        assert_eq!(s, 201, "{b}");
    }
    // The session works before the backup.
    let costs = format!("/v1/tenants/{first}/costs");
    let with_cookie = |addr: std::net::SocketAddr| {
        raw_request(
            addr,
            format!("GET {costs} HTTP/1.1\r\nHost: a\r\nConnection: close\r\nCookie: costguard_session={cookie}\r\n\r\n").as_bytes(),
        )
    };
    assert_eq!(with_cookie(cg.proxy).status, 200);

    // Load: proxied requests with every key, and admin writes (a project, a
    // user and a key per round), bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let proxied_ok = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for (t, key) in secrets.clone() {
        let (stop, ok, url) = (
            stop.clone(),
            proxied_ok.clone(),
            cg.url(&format!("/v1/tenants/{t}/costs")),
        );
        load.push(tokio::spawn(async move {
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let (status, _, _) = get_as(&url, &key).await;
                assert_eq!(status, 200);
                ok.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let writer_tenant = tenants[1].clone();
    let loaded = writer_tenant.clone();
    let admin_addr = cg.admin;
    let writes = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            // (what, id, acknowledged at)
            let mut done: Vec<(String, String, Instant)> = Vec::new();
            let mut keys: Vec<(String, String)> = Vec::new();
            for i in 0..400 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = &writer_tenant;
                let (s, b) = admin(
                    admin_addr,
                    "PUT",
                    &format!("/admin/v1/tenants/{t}/users/load-{i}"),
                    Some(json!({"email": format!("load{i}@acme.example"), "roles": ["viewer"]})),
                );
                assert!(s == 201 || s == 409, "{s} {b}");
                if s == 201 {
                    done.push(("user".into(), format!("load-{i}"), Instant::now()));
                }
                let (s, b) = admin(
                    admin_addr,
                    "POST",
                    &format!("/admin/v1/tenants/{t}/keys"),
                    Some(json!({"description": format!("load {i}"), "roles": ["viewer"]})),
                );
                assert!(s == 201 || s == 409, "{s} {b}");
                if s == 201 {
                    let id = b["key_id"].as_str().unwrap().to_string();
                    done.push(("key".into(), id.clone(), Instant::now()));
                    keys.push((id, b["api_key"].as_str().unwrap().to_string()));
                }
            }
            (done, keys)
        })
    };
    // Let the load run, then back up while it goes on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_backup = Instant::now();
    let (run, backup) = {
        let (admin, work) = (cg.admin, work.path().to_path_buf());
        tokio::task::spawn_blocking(move || take_backup(admin, &work))
            .await
            .unwrap()
    };
    let after_backup = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (written, load_keys) = writes.await.unwrap();
    assert!(
        run.status.success(),
        "backup failed: {}\n{}",
        run.stderr,
        cg.logs()
    );
    eprintln!("backup: {}", run.stdout.trim());
    assert!(proxied_ok.load(Ordering::Relaxed) > 0);

    // The backup directory: private, with a manifest that names the audit
    // head and every file's checksum.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], 1);
    assert_eq!(
        std::fs::metadata(backup.join("store.jsonl"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let head_seq = manifest["audit"]["head"]["seq"].as_u64().unwrap();
    assert_eq!(manifest["audit"]["last_seq"], head_seq);
    assert!(
        manifest["files"].as_array().unwrap().len() >= 3,
        "{manifest:#}"
    );
    let paused_ms = manifest["store"]["writes_paused_micros"].as_u64().unwrap() as f64 / 1000.0;
    // No secret in clear: neither the admin token nor any key.
    let export = std::fs::read_to_string(backup.join("store.jsonl")).unwrap();
    for (_, key) in &secrets {
        assert!(!export.contains(&hex(key.as_bytes())) && !export.contains(key.as_str()));
    }
    assert!(!export.contains(&hex(ADMIN_TOKEN.as_bytes())));
    assert!(!export.contains(&hex(cookie.as_bytes())));

    // What the old instance held, less what the load wrote once the
    // backup had begun, must all be there.
    tenants.sort();
    let old = inventory(cg.admin, &tenants);
    let old_key_file = data.join("audit-hmac.key");
    drop(cg);

    // RTO: restore, start, ready.
    let new_data = work.path().join("new").join("data");
    let rto = Instant::now();
    let restored = cli(["restore"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&new_data)
        .arg("--audit-key-file")
        .arg(&old_key_file)
        .run();
    assert!(
        restored.status.success(),
        "restore failed: {}",
        restored.stderr
    );
    let restore_time = rto.elapsed();
    // The restored log verifies as restored, with the key that signed it.
    let verify = cli(["audit", "verify"]).arg(new_data.join("audit")).run();
    assert!(
        verify.status.success(),
        "{}{}",
        verify.stdout,
        verify.stderr
    );
    assert!(
        verify.stdout.contains("head signature verified"),
        "{}",
        verify.stdout
    );
    let cg = Sidecar::start_with_store(&config, &[], Some(&new_data));
    wait_ready(&cg);
    let rto = rto.elapsed();
    let store_bytes = dir_bytes(&new_data);

    // Every tenant, key, project, user, role and session of the snapshot.
    let (s, list) = admin(cg.admin, "GET", "/admin/v1/tenants", None);
    assert_eq!(s, 200);
    let restored_tenants = ids(&list, "tenant_id");
    assert_eq!(restored_tenants, tenants);
    let now = inventory(cg.admin, &tenants);
    for ((t, before), (_, after)) in old.iter().zip(&now) {
        for (i, what) in ["keys", "projects", "users", "roles", "sessions"]
            .iter()
            .enumerate()
        {
            for id in &before[i] {
                let created_during_load = written
                    .iter()
                    .any(|(_, w, at)| w == id && *at > before_backup);
                if !created_during_load {
                    assert!(after[i].contains(id), "{t}: {what} {id} lost");
                }
            }
        }
    }
    // The admin writes acknowledged before the backup began are all there,
    // and nothing acknowledged after it finished is (one point in time).
    let mut during = 0;
    let (_, lists) = now.iter().find(|(t, _)| *t == loaded).unwrap();
    for (what, id, at) in &written {
        let list = if what == "user" { &lists[2] } else { &lists[0] };
        if *at < before_backup {
            assert!(
                list.contains(id),
                "{what} {id} acknowledged before the backup is missing"
            );
        } else if *at > after_backup {
            assert!(
                !list.contains(id),
                "{what} {id} acknowledged after the backup is in it"
            );
        } else {
            during += 1;
        }
    }
    let (_, of_first) = now.iter().find(|(t, _)| *t == first).unwrap();
    assert_eq!(of_first[4], ["sess-00112233aabbccdd"]);
    // Keys still authenticate and reach the upstream; the session works.
    let seen_before = up.count();
    for (t, key) in &secrets {
        let (status, _, body) = get_as(&cg.url(&format!("/v1/tenants/{t}/costs")), key).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(up.count(), seen_before + secrets.len());
    let r = with_cookie(cg.proxy);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.last().headers["x-costops-user-id"], "alice@acme.example");
    // Every key created under load that the restore holds authenticates
    // (its hash index came with it, from the same point in time), and the
    // others do not.
    for (id, secret) in &load_keys {
        let (status, _, _) = get_as(&cg.url(&format!("/v1/tenants/{loaded}/costs")), secret).await;
        let expected = if lists[0].contains(id) { 200 } else { 401 };
        assert_eq!(status, expected, "load key {id}");
    }
    // A new key works on the restored instance.
    let (s, b) = admin(
        cg.admin,
        "POST",
        &format!("/admin/v1/tenants/{}/keys", tenants[0]),
        Some(json!({"roles": ["viewer"]})),
    );
    assert_eq!(s, 201, "{b}");
    let fresh = b["api_key"].as_str().unwrap().to_string();
    let (status, _, _) = get_as(
        &cg.url(&format!("/v1/tenants/{}/costs", tenants[0])),
        &fresh,
    )
    .await;
    assert_eq!(status, 200);

    // New records continue the restored chain, and it verifies.
    let audit_dir = new_data.join("audit");
    let mut cg = cg;
    cg.terminate();
    cg.wait(Duration::from_secs(20));
    let verify = cli(["audit", "verify"]).arg(&audit_dir).run();
    assert!(
        verify.status.success(),
        "{}{}",
        verify.stdout,
        verify.stderr
    );
    let records = support::audit::records(&audit_dir);
    let last = records.last().unwrap()["seq"].as_u64().unwrap();
    assert!(
        last > head_seq + secrets.len() as u64,
        "{last} vs {head_seq}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["event_type"] == "audit.backup" && r["seq"].as_u64().unwrap() <= head_seq),
        "the backup's own record is in it"
    );
    eprintln!(
        "RTO: restore {:.0} ms, restore + start + ready {:.0} ms; store {} KiB on disk ({} records, audit {} records); writes paused {paused_ms:.2} ms; admin writes during the backup: {during}; proxied requests under load: {}",
        restore_time.as_secs_f64() * 1000.0,
        rto.as_secs_f64() * 1000.0,
        store_bytes / 1024,
        manifest["store"]["records"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        manifest["audit"]["records"],
        proxied_ok.load(Ordering::Relaxed),
    );
}

/// A small backup of a running server, for the refusal tests.
fn small_backup(work: &Path, up: &Upstream) -> (PathBuf, PathBuf, Sidecar) {
    let data = work.join("data");
    let cg = Sidecar::start_with_store(&config_for(&up.url(), ""), &[], Some(&data));
    let t = cg.create_tenant("free");
    cg.create_key(&t, &["viewer"]);
    let (run, backup) = take_backup(cg.admin, work);
    assert!(run.status.success(), "{}", run.stderr);
    (backup, data.join("audit-hmac.key"), cg)
}

/// `costguard backup WORK/backup` from the admin port at `admin`, with the
/// admin token in a file (never on the command line): the run and the
/// backup's directory. Blocks until the command ends.
fn take_backup(admin: std::net::SocketAddr, work: &Path) -> (support::Run, PathBuf) {
    let token_file = work.join("admin-token");
    std::fs::write(&token_file, ADMIN_TOKEN).unwrap();
    let backup = work.join("backup");
    let run = cli(["backup"])
        .arg(&backup)
        .args(["--admin-url", &format!("http://{admin}"), "--token-file"])
        .arg(&token_file)
        .run();
    (run, backup)
}

fn restore(backup: &Path, data: &Path, key: &Path) -> support::Run {
    cli(["restore"])
        .arg(backup)
        .arg("--data-dir")
        .arg(data)
        .arg("--audit-key-file")
        .arg(key)
        .run()
}

/// Copies a backup directory (to tamper with the copy).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_refuses_a_tampered_backup_and_a_target_in_use() {
    let up = Upstream::start().await;
    let work = tempfile::tempdir().unwrap();
    let (backup, key, cg) = small_backup(work.path(), &up);

    // A flipped byte in the store export: refused, the target never made.
    let flipped = work.path().join("flipped");
    copy_dir(&backup, &flipped);
    let path = flipped.join("store.jsonl");
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let target = work.path().join("t1").join("data");
    let out = restore(&flipped, &target, &key);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("SHA-256 does not match"),
        "{}",
        out.stderr
    );
    assert!(!target.exists());
    assert!(
        std::fs::read_dir(work.path().join("t1")).map_or(true, |mut d| d.next().is_none()),
        "nothing left behind"
    );

    // A truncated audit file: refused.
    let cut = work.path().join("cut");
    copy_dir(&backup, &cut);
    let audit_file = cut.join("audit").join("audit-000001.jsonl");
    let len = std::fs::metadata(&audit_file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&audit_file)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let out = restore(&cut, &target, &key);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("truncated or altered"),
        "{}",
        out.stderr
    );
    assert!(!target.exists());

    // An added file: refused.
    let added = work.path().join("added");
    copy_dir(&backup, &added);
    std::fs::write(added.join("audit").join("audit-000009.jsonl"), b"{}\n").unwrap();
    let out = restore(&added, &target, &key);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("not in the manifest"), "{}", out.stderr);

    // The live store (a server holds it) and any non-empty directory: refused, untouched.
    let live = work.path().join("data");
    let before = dir_bytes(&live);
    let out = restore(&backup, &live, &key);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("is not empty"), "{}", out.stderr);
    let other = work.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), b"mine").unwrap();
    let out = restore(&backup, &other, &key);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(other.join("keep.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
    drop(cg);
    assert!(dir_bytes(&live) >= before);

    // Another audit key than the one that signed the head: refused.
    let wrong = work.path().join("wrong.key");
    std::fs::write(&wrong, "another-key-0123456789abcdef").unwrap();
    let out = restore(&backup, &target, &wrong);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("not the key that signed"),
        "{}",
        out.stderr
    );
    assert!(!target.exists());

    // The untampered backup restores onto an empty directory.
    std::fs::create_dir_all(&target).unwrap();
    let out = restore(&backup, &target, &key);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(target.join("audit").join("audit.head").exists());
    // Built inside the existing directory (it may be a volume's mount
    // point) and moved up: nothing of the staging is left.
    for e in std::fs::read_dir(&target).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with('.'), "{name} left behind");
    }

    // Targets from a configuration: the audit log and its key outside the
    // data directory (as with a Secret-mounted key).
    let elsewhere = work.path().join("elsewhere");
    let config = work.path().join("restore.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{0}/data\"\n[audit]\ndir = \"{0}/audit-log\"\nhmac_key_file = \"{0}/keys/audit.key\"\n",
            elsewhere.display()
        ),
    )
    .unwrap();
    let out = cli(["restore"])
        .arg(&backup)
        .arg("--config")
        .arg(&config)
        .arg("--audit-key-file")
        .arg(&key)
        .run();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!elsewhere.join("data").join("audit").exists());
    let verify = cli(["audit", "verify"])
        .arg(elsewhere.join("audit-log"))
        .arg("--key-file")
        .arg(elsewhere.join("keys").join("audit.key"))
        .run();
    assert!(
        verify.stdout.contains("head signature verified"),
        "{}{}",
        verify.stdout,
        verify.stderr
    );
    // Run again: everything is in place now, so it is refused.
    let out = cli(["restore"])
        .arg(&backup)
        .arg("--config")
        .arg(&config)
        .run();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("is not empty"), "{}", out.stderr);

    // A backup never writes into a non-empty directory.
    let token_file = work.path().join("admin-token");
    let out = cli(["backup"])
        .arg(&other)
        .args(["--admin-url", "http://127.0.0.1:1", "--token-file"])
        .arg(&token_file)
        .run();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("not empty"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_needs_system_admin() {
    let up = Upstream::start().await;
    let work = tempfile::tempdir().unwrap();
    let cg = Sidecar::start_with_store(
        &config_for(&up.url(), ""),
        &[],
        Some(&work.path().join("data")),
    );
    let t = cg.create_tenant("enterprise");
    // A tenant admin's key is not enough; neither is a wrong token.
    let (_, tenant_admin) = cg.create_key(&t, &["admin"]);
    for (name, credential) in [
        ("tenant-admin", tenant_admin.as_str()),
        ("wrong", "not-the-admin-token-0123"),
    ] {
        let token_file = work.path().join(name);
        std::fs::write(&token_file, credential).unwrap();
        let dir = work.path().join(format!("backup-{name}"));
        let out = cli(["backup"])
            .arg(&dir)
            .args([
                "--admin-url",
                &format!("http://{}", cg.admin),
                "--token-file",
            ])
            .arg(&token_file)
            .run();
        assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
        assert!(out.stderr.contains("refused the backup"), "{}", out.stderr);
        assert!(!dir.exists());
    }
    // The admin token and port from the configuration and the environment
    // (as an operator runs it beside the server): accepted.
    let port = support::idp::free_port();
    let config = config_for(&up.url(), "");
    drop(cg);
    let cg = Sidecar::start_with_store(
        &config,
        &[("COSTGUARD_ADMIN_LISTEN", &format!("0.0.0.0:{port}"))],
        Some(&work.path().join("data")),
    );
    let config_file = work.path().join("costguard.toml");
    std::fs::write(
        &config_file,
        format!("[admin]\nlisten = \"0.0.0.0:{port}\"\n"),
    )
    .unwrap();
    let dir = work.path().join("backup-by-config");
    // An existing empty directory (a mount point, say) is filled in place.
    std::fs::create_dir(&dir).unwrap();
    let out = cli(["backup"])
        .arg(&dir)
        .arg("--config")
        .arg(&config_file)
        .env("COSTGUARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .run();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(dir.join("manifest.json").exists());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        3,
        "store.jsonl, audit/, manifest.json"
    );
    // The tenant admin's attempt is on record as a denial.
    let (s, b) = cg.admin(
        "GET",
        "/admin/v1/audit?event_type=security.access_denied",
        None,
    );
    assert_eq!(s, 200);
    assert!(b.to_string().contains("/admin/v1/backup"), "{b}");
}

#[test]
fn the_shared_store_is_backed_up_with_pg_dump() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("costguard.toml");
    std::fs::write(
        &config,
        "[store]\nbackend = \"postgres\"\nurl = \"postgres://costguard@db:5432/costguard\"\n",
    )
    .unwrap();
    for args in [["backup"], ["restore"]] {
        let out = cli(args)
            .arg(work.path().join("b"))
            .arg("--config")
            .arg(&config)
            .run();
        assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
        assert!(out.stderr.contains("pg_dump"), "{}", out.stderr);
        assert!(
            out.stderr.contains("Redis holds only rate-limit windows"),
            "{}",
            out.stderr
        );
    }
    // --help explains both commands.
    let help = cli(["backup", "--help"]).run();
    assert!(help.success_stdout().contains("consistent backup"));
    let help = cli(["restore", "--help"]).run();
    assert!(help.success_stdout().contains("fresh data"));
}

/// RTO and the writers' pause with a larger store: 100,000 API keys (about
/// the store of a large single-pod install). Timing, not behaviour, so it
/// is run on demand and prints its figures:
/// `cargo test --release --test backup -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn measure_backup_and_restore_of_a_hundred_thousand_keys() {
    use costguard::authn::api_key;
    use costguard::model::Tier;
    use costguard::store::conformance::{sample_key, sample_tenant};

    const KEYS: usize = 100_000;
    let up = Upstream::start().await;
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("old").join("data");
    let tenant = sample_tenant(Tier::Enterprise);
    let secrets: Vec<String> = (0..KEYS).map(|_| api_key::generate()).collect();
    {
        let store = SledStore::open(&data).unwrap();
        store.insert_tenant(&tenant).await.unwrap();
        let keys: Vec<_> = secrets
            .iter()
            .map(|s| sample_key(&tenant.tenant_id, &api_key::hash_hex(s)))
            .collect();
        store.import_keys(&keys).await.unwrap();
    }
    let config = config_for(&up.url(), "[rate_limit]\nenterprise = \"unlimited\"\n");
    let cg = Sidecar::start_with_store(&config, &[], Some(&data));
    let old_bytes = dir_bytes(&data);
    // Proxied requests go on during the backup; their slowest is reported.
    let stop = Arc::new(AtomicBool::new(false));
    let slowest = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..4)
        .map(|w| {
            let (stop, slowest) = (stop.clone(), slowest.clone());
            let (url, key) = (
                cg.url(&format!("/v1/tenants/{}/costs", tenant.tenant_id)),
                secrets[w].clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let (status, _, _) = get_as(&url, &key).await;
                    assert_eq!(status, 200);
                    slowest.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = Instant::now();
    let (run, backup) = {
        let (admin, work) = (cg.admin, work.path().to_path_buf());
        tokio::task::spawn_blocking(move || take_backup(admin, &work))
            .await
            .unwrap()
    };
    let backup_time = took.elapsed();
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(run.status.success(), "{}", run.stderr);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(backup.join("manifest.json")).unwrap()).unwrap();
    let backup_bytes = dir_bytes(&backup);
    drop(cg);
    let new_data = work.path().join("new").join("data");
    let rto = Instant::now();
    let out = restore(&backup, &new_data, &data.join("audit-hmac.key"));
    assert!(out.status.success(), "{}", out.stderr);
    let restore_time = rto.elapsed();
    let cg = Sidecar::start_with_store(&config, &[], Some(&new_data));
    wait_ready(&cg);
    let rto = rto.elapsed();
    for secret in secrets.iter().step_by(KEYS / 100) {
        let (status, _, _) = get_as(
            &cg.url(&format!("/v1/tenants/{}/costs", tenant.tenant_id)),
            secret,
        )
        .await;
        assert_eq!(status, 200);
    }
    eprintln!(
        "{KEYS} keys: store {} MiB on disk, backup {} MiB; backup took {:.2} s, writes paused {:.1} ms, slowest proxied request meanwhile {:.1} ms; restore {:.2} s, restore + start + ready (RTO) {:.2} s",
        old_bytes >> 20,
        backup_bytes >> 20,
        backup_time.as_secs_f64(),
        manifest["store"]["writes_paused_micros"].as_u64().unwrap() as f64 / 1000.0,
        slowest.load(Ordering::Relaxed) as f64 / 1000.0,
        restore_time.as_secs_f64(),
        rto.as_secs_f64(),
    );
}
