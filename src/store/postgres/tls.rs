//! TLS to PostgreSQL with rustls (ring provider).
//!
//! `sslmode=require` in the URL turns it on, and then the server's
//! certificate and name are verified (rustls always does: stricter than
//! libpq's `require`, like its `verify-full`) against the PEM bundle in
//! `store.tls_ca_file`, else the system's roots. `disable` and `prefer`
//! (tokio-postgres's default) connect in plain text: an unverified
//! "maybe TLS" protects against nothing an attacker on the path cannot undo.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::PostgresConfig;
use crate::store::StoreError;

/// The TLS connector `pg` asks for, or `None` for plain TCP.
pub(super) fn connector(
    cfg: &PostgresConfig,
    pg: &tokio_postgres::Config,
) -> Result<Option<MakeRustlsConnect>, StoreError> {
    if pg.get_ssl_mode() != SslMode::Require {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.tls_ca_file {
        Some(path) => {
            let fail = |e: &dyn std::fmt::Display| {
                StoreError::Backend(format!("store.tls_ca_file {}: {e}", path.display()))
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| fail(&e))?
                .collect::<Result<_, _>>()
                .map_err(|e| fail(&e))?;
            if certs.is_empty() {
                return Err(fail(&"no certificate in it"));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| fail(&e))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // One the system has but rustls cannot parse is skipped.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(StoreError::Backend(
                    "sslmode=require but no system CA certificates were found; set store.tls_ca_file"
                        .into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("postgres TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}
