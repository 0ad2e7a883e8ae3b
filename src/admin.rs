//! The admin port: `/health` and `/ready` so far; the admin API and
//! `/metrics` arrive with their issues. Everything else is a JSON 404.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::access_log::{Entry, LoggedBody};
use crate::error::{self, Error};
use crate::forward::headers::X_REQUEST_ID;
use crate::health::Readiness;
use crate::listener::{ConnInfo, Handler};
use crate::request_id;

/// The admin port's handler. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Admin {
    readiness: Arc<Readiness>,
    access_log: bool,
}

impl Admin {
    /// Builds the admin router.
    pub fn new(readiness: Arc<Readiness>, access_log: bool) -> Self {
        Self {
            readiness,
            access_log,
        }
    }
}

impl Handler for Admin {
    type Body = LoggedBody<Full<Bytes>>;

    async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<Self::Body> {
        let request_id = request_id::take_or_generate(req.headers());
        let entry = self.access_log.then(|| Entry {
            listener: "admin",
            request_id: request_id.clone(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            peer: conn.peer.ip(),
            start: Instant::now(),
        });
        let mut resp = match self.readiness.respond(req.method(), req.uri().path()) {
            Some(resp) => resp,
            None => error::rescue(&Error::NotFound, &request_id),
        };
        resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        let status = resp.status();
        resp.map(|body| LoggedBody::new(body, entry, status))
    }
}
