//! `costguard backup DIR`: asks the running server for a snapshot
//! (`GET /admin/v1/backup` on its admin port) and writes it into `DIR`.
//!
//! Nothing is trusted before it is checked: every path the stream names
//! must be one a backup holds ([`super::allowed_path`]), each file's size,
//! SHA-256 and line count as received must equal the server's manifest,
//! and the stream must end with that manifest. The files go into a hidden
//! staging directory (0700, files 0600; see `Staging`), are synced, and
//! are put in place only when everything matched, the manifest last, so
//! `DIR` is either a complete backup or untouched.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use super::{
    AUDIT_DIR, BackupError, FileEntry, Frame, Hasher, MANIFEST, MAX_FRAME_LINE, Manifest,
    allowed_path,
};

/// How long the stream may stall before the backup is given up.
pub const STALL: Duration = Duration::from_secs(60);

/// Where the server is and who asks.
#[derive(Debug, Clone)]
pub struct Target {
    /// The admin port's base URL (`http://127.0.0.1:9090`).
    pub admin_url: String,
    /// The admin token (or an API key holding system_admin).
    pub token: String,
}

/// Takes a backup from the server into `dir` (missing or empty).
pub async fn backup(target: &Target, dir: &Path) -> Result<Manifest, BackupError> {
    if !super::is_fresh(dir)? {
        return Err(BackupError::Refused(format!(
            "{}: exists and is not empty; give a new directory (a backup never overwrites one)",
            dir.display()
        )));
    }
    let base = target.admin_url.trim_end_matches('/');
    if !base.starts_with("http://") {
        return Err(BackupError::Refused(format!(
            "{base}: the admin port serves plain HTTP on a local address: give http://HOST:PORT (kubectl port-forward reaches a pod's)"
        )));
    }
    let uri: http::Uri = format!("{base}/admin/v1/backup")
        .parse()
        .map_err(|e| BackupError::Refused(format!("{base}: not a URL: {e}")))?;
    let staging = super::Staging::new(dir, "backup")?;
    match fetch(uri, &target.token, &staging.dir).await {
        Ok(manifest) => {
            let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
            let written = super::write_new(&staging.dir.join(MANIFEST), &text).and_then(|()| {
                if staging.dir.join(AUDIT_DIR).exists() {
                    super::sync_dir(&staging.dir.join(AUDIT_DIR))?;
                }
                Ok(())
            });
            match written {
                Ok(()) => staging.commit(Some(MANIFEST)).map(|()| manifest),
                Err(e) => {
                    staging.abandon();
                    Err(e)
                }
            }
        }
        Err(e) => {
            staging.abandon();
            Err(e)
        }
    }
}

async fn fetch(uri: http::Uri, token: &str, tmp: &Path) -> Result<Manifest, BackupError> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let req = http::Request::get(uri.clone())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Empty::new())
        .map_err(|e| BackupError::Refused(format!("the admin token cannot be sent: {e}")))?;
    let resp = tokio::time::timeout(STALL, client.request(req))
        .await
        .map_err(|_| BackupError::Refused(format!("{uri}: no answer within {STALL:?}")))?
        .map_err(|e| BackupError::Refused(format!("{uri}: cannot connect: {}", chain(&e))))?;
    let status = resp.status();
    let mut body = resp.into_body();
    if status != http::StatusCode::OK {
        let mut text = Vec::new();
        while let Ok(Some(Ok(frame))) = tokio::time::timeout(STALL, body.frame()).await {
            if let Some(d) = frame.data_ref() {
                text.extend_from_slice(d);
            }
            if text.len() > 64 << 10 {
                break;
            }
        }
        let message = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&text).into_owned());
        return Err(BackupError::Refused(format!(
            "the server refused the backup ({status}): {message}"
        )));
    }
    let mut reader = Reader::new(tmp);
    loop {
        let frame = tokio::time::timeout(STALL, body.frame())
            .await
            .map_err(|_| BackupError::Invalid(format!("the stream stalled for {STALL:?}")))?;
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    reader.feed(data)?;
                }
            }
            Some(Err(e)) => {
                return Err(BackupError::Invalid(format!("the stream broke: {e}")));
            }
            None => break,
        }
    }
    reader.end()
}

/// Parses the frames as they arrive and writes the files.
struct Reader<'a> {
    tmp: &'a Path,
    buf: BytesMut,
    /// The file being received: its entry so far, hasher, file, bytes left.
    current: Option<(FileEntry, Hasher, std::fs::File, u64)>,
    received: Vec<FileEntry>,
    manifest: Option<Manifest>,
}

impl<'a> Reader<'a> {
    fn new(tmp: &'a Path) -> Self {
        Self {
            tmp,
            buf: BytesMut::new(),
            current: None,
            received: Vec::new(),
            manifest: None,
        }
    }

    fn feed(&mut self, data: Bytes) -> Result<(), BackupError> {
        self.buf.extend_from_slice(&data);
        loop {
            if let Some((entry, hasher, file, left)) = &mut self.current {
                let n = (*left).min(self.buf.len() as u64) as usize;
                if n == 0 && *left > 0 {
                    return Ok(());
                }
                let chunk = self.buf.split_to(n);
                hasher.update(&chunk);
                entry.lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
                file.write_all(&chunk)
                    .map_err(BackupError::io(format!("write {}", entry.path)))?;
                *left -= n as u64;
                if *left == 0 {
                    let (mut entry, hasher, file, _) = self.current.take().expect("set");
                    file.sync_all()
                        .map_err(BackupError::io(format!("sync {}", entry.path)))?;
                    entry.sha256 = hasher.finish();
                    self.received.push(entry);
                }
                continue;
            }
            let Some(end) = self.buf.iter().position(|b| *b == b'\n') else {
                if self.buf.len() > MAX_FRAME_LINE {
                    return Err(BackupError::Invalid("a frame line is too long".into()));
                }
                return Ok(());
            };
            let line = self.buf.split_to(end + 1);
            if self.manifest.is_some() {
                return Err(BackupError::Invalid("data after the manifest".into()));
            }
            let frame: Frame = serde_json::from_slice(&line[..end])
                .map_err(|e| BackupError::Invalid(format!("not a backup stream: {e}")))?;
            match frame {
                Frame::File { path, bytes } => self.open(path, bytes)?,
                Frame::Manifest(m) => self.manifest = Some(*m),
                Frame::Error(e) => {
                    return Err(BackupError::Invalid(format!(
                        "the server failed while sending the backup: {e}"
                    )));
                }
            }
            if self.buf.is_empty() {
                return Ok(());
            }
        }
    }

    fn open(&mut self, path: String, bytes: u64) -> Result<(), BackupError> {
        if !allowed_path(&path) || self.received.iter().any(|e| e.path == path) {
            return Err(BackupError::Invalid(format!(
                "the stream names an unexpected file: {path:?}"
            )));
        }
        if path.starts_with(AUDIT_DIR) && !self.tmp.join(AUDIT_DIR).exists() {
            super::new_dir(&self.tmp.join(AUDIT_DIR))?;
        }
        let file = super::new_file(&self.tmp.join(&path))?;
        let entry = FileEntry {
            path,
            bytes,
            sha256: String::new(),
            lines: 0,
        };
        if bytes == 0 {
            file.sync_all()
                .map_err(BackupError::io(format!("sync {}", entry.path)))?;
            self.received.push(FileEntry {
                sha256: Hasher::new().finish(),
                ..entry
            });
        } else {
            self.current = Some((entry, Hasher::new(), file, bytes));
        }
        Ok(())
    }

    fn end(self) -> Result<Manifest, BackupError> {
        if self.current.is_some() || !self.buf.is_empty() {
            return Err(BackupError::Invalid(
                "the stream ended inside a file (the server stopped or failed: see its log)".into(),
            ));
        }
        let Some(manifest) = self.manifest else {
            return Err(BackupError::Invalid(
                "the stream ended before its manifest (the server stopped?)".into(),
            ));
        };
        if manifest.format != super::FORMAT {
            return Err(BackupError::Invalid(format!(
                "backup format {} (this costguard reads {})",
                manifest.format,
                super::FORMAT
            )));
        }
        if manifest.files != self.received {
            return Err(BackupError::Invalid(
                "what arrived does not match the server's manifest (sizes or checksums differ)"
                    .into(),
            ));
        }
        Ok(manifest)
    }
}

/// An error with its causes (`client error (Connect): tcp connect error:
/// Connection refused`).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
