//! `costguard compliance`: asks the running server's admin port for the
//! report (`GET /admin/v1/compliance`, the same [`Target`] as `costguard
//! backup`) and prints it as a table, or as the server's JSON.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

pub use crate::backup::client::Target;

/// How long the server may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer read.
const MAX_BODY: usize = 8 << 20;

/// Why no report came back.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL or tenant id given cannot be used.
    #[error("{0}")]
    Usage(String),
    /// The server could not be reached, or did not answer in time.
    #[error("{0}")]
    Connect(String),
    /// The server answered with an error (its message).
    #[error("the server refused the report ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: http::StatusCode,
        /// The error's message.
        message: String,
    },
    /// The answer is not a report.
    #[error("the server's answer is not a compliance report: {0}")]
    Invalid(String),
}

/// The report for `tenant` (or every tenant the token may see).
pub async fn fetch(target: &Target, tenant: Option<&str>) -> Result<Value, FetchError> {
    let base = target.admin_url.trim_end_matches('/');
    if !base.starts_with("http://") {
        return Err(FetchError::Usage(format!(
            "{base}: the admin port serves plain HTTP on a local address: give http://HOST:PORT (kubectl port-forward reaches a pod's)"
        )));
    }
    let query = match tenant {
        Some(t) if crate::model::is_tenant_id(t) => format!("?tenant_id={t}"),
        Some(t) => {
            return Err(FetchError::Usage(format!(
                "--tenant {t:?} is not a tenant id (org-…)"
            )));
        }
        None => String::new(),
    };
    let uri: http::Uri = format!("{base}/admin/v1/compliance{query}")
        .parse()
        .map_err(|e| FetchError::Usage(format!("{base}: not a URL: {e}")))?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let req = http::Request::get(uri.clone())
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", target.token),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(http_body_util::Empty::new())
        .map_err(|_| FetchError::Usage("the admin token cannot be sent in a header".into()))?;
    let answer = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| FetchError::Connect(format!("{uri}: cannot connect: {e}")))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| FetchError::Connect(format!("{uri}: the answer broke off: {e}")))?
            .to_bytes();
        Ok::<_, FetchError>((status, body))
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, answer)
        .await
        .map_err(|_| FetchError::Connect(format!("{uri}: no answer within {TIMEOUT:?}")))??;
    let value: Option<Value> = serde_json::from_slice(&body).ok();
    if !status.is_success() {
        let message = value
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        return Err(FetchError::Refused { status, message });
    }
    let value = value.ok_or_else(|| FetchError::Invalid("not JSON".into()))?;
    if !value["controls"].is_array() || !value["summary"].is_object() {
        return Err(FetchError::Invalid("no controls or summary".into()));
    }
    Ok(value)
}

/// Whether any control of `report` fails.
pub fn any_fail(report: &Value) -> bool {
    report["controls"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["status"] == "fail"))
}

/// The report as a readable table: a summary line, one block per control
/// (status, id, title, frameworks, evidence, remediation), then the
/// per-framework roll-up.
pub fn render_text(report: &Value) -> String {
    let mut out = String::new();
    let scope = match report["scope"]["tenant_id"].as_str() {
        Some(t) => format!(
            "tenant {t} ({})",
            report["scope"]["organization_name"].as_str().unwrap_or("")
        ),
        None => format!(
            "all tenants ({})",
            report["scope"]["tenants"].as_u64().unwrap_or(0)
        ),
    };
    let s = &report["summary"];
    let _ = writeln!(
        out,
        "Compliance report: {scope}, generated {}",
        report["generated_at"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "Overall {}: {} pass, {} warn, {} fail of {} controls\n",
        report["status"].as_str().unwrap_or("?").to_uppercase(),
        s["pass"],
        s["warn"],
        s["fail"],
        s["total"]
    );
    for c in report["controls"].as_array().into_iter().flatten() {
        let frameworks: Vec<&str> = c["frameworks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let _ = writeln!(
            out,
            "{:<5} {:<18} {}",
            c["status"].as_str().unwrap_or("?").to_uppercase(),
            c["id"].as_str().unwrap_or("?"),
            c["title"].as_str().unwrap_or("")
        );
        let _ = writeln!(out, "      frameworks:  {}", frameworks.join(", "));
        let _ = writeln!(
            out,
            "      evidence:    {}",
            c["evidence"].as_str().unwrap_or("")
        );
        if let Some(r) = c["remediation"].as_str().filter(|r| !r.is_empty()) {
            let _ = writeln!(out, "      remediation: {r}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "{:<22} {:<6} {:>4} {:>4} {:>4}",
        "FRAMEWORK", "STATUS", "PASS", "WARN", "FAIL"
    );
    for f in report["frameworks"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<22} {:<6} {:>4} {:>4} {:>4}",
            f["id"].as_str().unwrap_or("?"),
            f["status"].as_str().unwrap_or("?").to_uppercase(),
            f["summary"]["pass"].as_u64().unwrap_or(0),
            f["summary"]["warn"].as_u64().unwrap_or(0),
            f["summary"]["fail"].as_u64().unwrap_or(0)
        );
    }
    out
}
