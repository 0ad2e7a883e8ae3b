//! Single sign-on across replicas sharing PostgreSQL and Redis, through the
//! real SAML identity provider (pysaml2 + xmlsec1): a login started on A
//! and finished on A gives a session that works on B; the assertion A
//! accepted is a replay on B; a logout on B ends the session on A too.
#![cfg(feature = "saml")]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::idp::{free_port, location, set_cookies};
use support::saml_idp::{SamlIdp, post_acs, saml_toml, saml_user, start_saml_login};
use support::shared::Shared;
use support::{Upstream, send};

fn costs(tenant: &str) -> String {
    format!("/v1/tenants/{tenant}/costs")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_made_on_one_replica_works_on_another_and_an_assertion_is_used_once() {
    let up = Upstream::start().await;
    let shared = Shared::new();
    // The identity provider knows the tenant, so the tenant comes first
    // (made through a replica without single sign-on, on the shared store).
    let plain = shared.replica(&up, "", &[]);
    let tenant = plain.create_tenant("enterprise");
    drop(plain);

    let port_a = free_port();
    let idp = SamlIdp::start(
        port_a,
        json!({"alice": saml_user("alice-pw", "alice@acme.example", &tenant, &["analyst"])}),
        "assertion",
    );
    // One SP for the deployment (behind a load balancer every replica has
    // the same public URL): both replicas name A's address.
    let toml = saml_toml(&idp, port_a, "");
    let a = shared.replica(
        &up,
        &toml,
        &[("COSTGUARD_PROXY_LISTEN", &format!("127.0.0.1:{port_a}"))],
    );
    let b = shared.replica(&up, &toml, &[]);

    let rd = costs(&tenant);
    let pending = start_saml_login(&a, &format!("rd={rd}")).await;
    let response = idp
        .response(json!({"user": "alice", "in_response_to": pending.request_id}))
        .await;
    let (status, headers, body) = post_acs(&a, &response, Some(&pending.cookie)).await;
    assert_eq!(status, 302, "{body}");
    assert_eq!(location(&headers), rd);
    let session = format!(
        "costguard_session={}",
        set_cookies(&headers)["costguard_session"]
    );

    // The session made on A works on B.
    let (status, _, body) = send("GET", &b.url(&rd), &[("cookie", &session)], String::new()).await;
    assert_eq!(status, 200, "{body}");
    let seen = up.last();
    assert_eq!(seen.headers["x-costops-auth-method"], "saml");
    assert_eq!(seen.headers["x-costops-user-id"], "alice@acme.example");

    // The assertion A accepted is a replay on B (the login cookie A signed
    // verifies on B: the replicas share the cookie key).
    let (status, _, body) = post_acs(&b, &response, Some(&pending.cookie)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("replayed"), "{body}");

    // Used on A again (cached there), then ended on B: A refuses it within
    // a second.
    let (status, _, _) = send("GET", &a.url(&rd), &[("cookie", &session)], String::new()).await;
    assert_eq!(status, 200);
    let (status, _, body) = send(
        "POST",
        &b.url("/auth/logout"),
        &[("cookie", &session)],
        String::new(),
    )
    .await;
    assert!(
        status.is_redirection() || status.is_success(),
        "{status} {body}"
    );
    let ended = Instant::now();
    loop {
        let (status, _, _) = send("GET", &a.url(&rd), &[("cookie", &session)], String::new()).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            ended.elapsed() < Duration::from_secs(1),
            "a session ended on B still works on A after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "session ended on B, refused on A after {:?}",
        ended.elapsed()
    );
}
