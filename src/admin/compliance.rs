//! `GET /admin/v1/compliance[?tenant_id=]` (JSON, a row of the route
//! table) and `GET /admin/compliance[?tenant_id=]` (the same report as an
//! HTML page, outside `/admin/v1/` because it is not JSON): who may see
//! which report, then [`crate::compliance`] computes it.
//!
//! `system_admin` sees every tenant, or one with `?tenant_id=`; a
//! tenant's caller holding `view_audit_logs` or `manage_api_keys` (the
//! `admin` role) sees its own tenant only, and naming another is refused
//! like any cross-tenant admin call (403). Reports share the audit
//! reports' slots, so a few callers cannot keep the blocking pool busy.

use std::net::IpAddr;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;

use super::audit_query::{query_params, scope};
use super::auth::Caller;
use super::error::ApiError;
use super::ops::AdminOps;
use super::record::Facts;
use super::{Admin, ApiError as E};
use crate::compliance::{ComplianceError, Report, html};
use crate::roles::Permission;
use crate::throttle::Port;

/// The HTML page's path.
pub(super) const PAGE_PATH: &str = "/admin/compliance";

/// A tenant's callers need one of these (`system_admin` needs nothing more).
const READERS: &[Permission] = &[Permission::ViewAuditLogs, Permission::ManageApiKeys];

/// The report `caller` asked for with `query`, or why not.
pub(super) async fn report(
    ops: &AdminOps,
    caller: &Caller,
    query: Option<&str>,
) -> Result<Report, ApiError> {
    let params = query_params(query);
    if let Some(unknown) = params.keys().find(|k| *k != "tenant_id") {
        return Err(ApiError::bad(format!(
            "unknown query parameter {unknown:?} (only tenant_id)"
        )));
    }
    let tenant = scope(caller, params.get("tenant_id").map(String::as_str), READERS)?;
    let compliance = ops.compliance.as_ref().ok_or_else(|| {
        ApiError::NotFound("the compliance report is not available on this server".into())
    })?;
    let _slot = ops.report_slot().map_err(|_| {
        ApiError::Busy("other compliance or audit reports are running; try again shortly")
    })?;
    let tenant = match tenant {
        Some(t) => Some(ops.tenant(&t).await?),
        None => None,
    };
    compliance.report(tenant).await.map_err(|e| match e {
        ComplianceError::Store(e) => super::ops::store_error(e),
    })
}

impl Admin {
    /// `GET /admin/compliance`: throttled and authenticated like every
    /// admin call; the page is the JSON report rendered, with headers that
    /// keep it from being framed, sniffed, cached or referred.
    pub(super) async fn compliance_page(
        &self,
        req: Request<Incoming>,
        client: IpAddr,
        request_id: &http::HeaderValue,
    ) -> Result<Response<Full<Bytes>>, E> {
        if req.method() != Method::GET {
            return Err(ApiError::MethodNotAllowed("GET"));
        }
        self.0
            .context
            .throttle
            .before_authentication(Port::Admin, client)?;
        let facts = Facts::of(&req, client, request_id, PAGE_PATH.to_string());
        let caller = self.authenticate(req.headers(), client, &facts).await?;
        let report = report(&self.0.ops, &caller, req.uri().query()).await?;
        let mut resp = Response::new(Full::new(Bytes::from(html::render(&report))));
        let h = resp.headers_mut();
        let v = header::HeaderValue::from_static;
        h.insert(header::CONTENT_TYPE, v("text/html; charset=utf-8"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_str(html::csp()).expect("the CSP is ASCII"),
        );
        h.insert(header::X_CONTENT_TYPE_OPTIONS, v("nosniff"));
        h.insert(header::CACHE_CONTROL, v("no-store"));
        h.insert(header::REFERRER_POLICY, v("no-referrer"));
        h.insert(header::X_FRAME_OPTIONS, v("DENY"));
        h.insert(
            header::HeaderName::from_static("cross-origin-resource-policy"),
            v("same-origin"),
        );
        Ok(resp)
    }
}
