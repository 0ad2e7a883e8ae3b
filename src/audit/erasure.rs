//! GDPR erasure of one user's identifiers from the audit log (issue 20):
//! `DELETE /admin/v1/tenants/{t}/users/{u}` pseudonymises every record of
//! that tenant naming the user (see [`super::subject`] for what is erased
//! and why the chain still verifies), in the files, the query index and
//! (shared mode) the rows shipped to PostgreSQL.
//!
//! How it runs beside the live writer:
//! - one file rewrite at a time ([`Audit::maintenance`], shared with
//!   retention, so a file retention removes is never brought back);
//! - the shipper is paused (its gate) for the whole erasure, and
//!   re-locates its cursor afterwards (line lengths change);
//! - closed files are rewritten without the writer's lock (the writer
//!   never touches them again); the file being written is rewritten under
//!   it (a few milliseconds per megabyte: proxied requests wait that long),
//!   after the writer's deferred index entries are flushed, and the writer
//!   continues on the new file;
//! - each file is rewritten atomically: a temporary file, fsync, rename,
//!   directory fsync; a crash leaves every file old or new. Lines keep
//!   their hashes, so the signed head stays valid;
//! - the index entries of a rewritten file are updated in place (offsets,
//!   lengths, the erased records' user hash). A marker (`index/stale`)
//!   is written first and removed last: an index found with it at start
//!   (a crash in between) is rebuilt from the files;
//! - erasing again is harmless (an erased record no longer names the
//!   user), so a crashed erasure is finished by running it again: a
//!   `DELETE` of the deleted user does (it still answers 404).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::files::files;
use super::index::{Index, Move};
use super::subject::{self, Erased, Target};
use super::{Audit, AuditError, Record};

/// What an erasure did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The user's pseudonym.
    pub pseudonym: String,
    /// Records pseudonymised in the files.
    pub records: u64,
    /// Records naming the user in the form written before erasure existed:
    /// left as they are (changing them would break the chain).
    pub legacy: u64,
    /// Files rewritten.
    pub files: u64,
    /// Rows pseudonymised in PostgreSQL (shared mode).
    pub shipped_rows: u64,
}

/// What rewriting one file did.
struct Rewritten {
    /// Records pseudonymised.
    records: u64,
    /// Records naming the user left in the legacy form.
    legacy: u64,
}

impl Audit {
    /// The pseudonym of `user_id` in `tenant_id` (keyed with the audit key).
    pub fn pseudonym(&self, tenant_id: &str, user_id: &str) -> String {
        subject::pseudonym(&self.key(), tenant_id, user_id)
    }

    fn key(&self) -> Vec<u8> {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .key()
            .to_vec()
    }

    /// Held while files are rewritten (erasure, retention): one at a time.
    pub async fn maintenance(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.maintenance.lock().await
    }

    /// [`Audit::maintenance`] from a blocking thread (a backup's cut).
    pub fn maintenance_blocking(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.maintenance.blocking_lock()
    }

    /// Pseudonymises `user_id` (and `email`) in every record of
    /// `tenant_id`: files, index, and the shipped copy when shipping.
    pub async fn erase_user(
        &self,
        tenant_id: &str,
        user_id: &str,
        email: Option<&str>,
    ) -> Result<Outcome, AuditError> {
        let _one_at_a_time = self.maintenance().await;
        let link = self.shipping().cloned();
        // The shipper reads no file while they change (and re-locates).
        let _shipper_paused = match &link {
            Some(l) => Some(l.stats.gate.lock().await),
            None => None,
        };
        // Everything queued so far is in the files first.
        self.flush().await?;
        let key = self.key();
        let pseudonym = subject::pseudonym(&key, tenant_id, user_id);
        let mut outcome = Outcome {
            pseudonym: pseudonym.clone(),
            ..Outcome::default()
        };
        let owned = (
            tenant_id.to_string(),
            user_id.to_string(),
            email.map(str::to_string),
        );
        let unreadable = |e: io::Error| AuditError::Unwritable(format!("erasure: {e}"));
        let (audit, key2, p2) = (self.clone(), key.clone(), pseudonym.clone());
        let result = super::off_runtime(move || {
            let (tenant_id, user_id, email) = &owned;
            let target = Target {
                tenant_id,
                user_id,
                email: email.as_deref(),
                pseudonym: &p2,
            };
            let mut total = Outcome::default();
            audit.erase_files(&target, &key2, |r| {
                total.files += u64::from(r.records > 0);
                total.records += r.records;
                total.legacy += r.legacy;
            })?;
            Ok(total)
        })
        .await;
        if let Some(link) = &link {
            // The files may have changed under the shipper's cursor (even
            // if the erasure then failed): it finds its place again at its
            // next step.
            link.stats
                .epoch
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        let result = result.map_err(unreadable)?;
        outcome.records = result.records;
        outcome.legacy = result.legacy;
        outcome.files = result.files;
        if let Some(link) = &link {
            outcome.shipped_rows = super::ship::erase_rows(
                link,
                &Target {
                    tenant_id,
                    user_id,
                    email,
                    pseudonym: &pseudonym,
                },
                &key,
            )
            .await
            .map_err(|e| AuditError::Unwritable(format!("erasure of the shipped copy: {e}")))?;
        }
        if outcome.legacy > 0 {
            tracing::warn!(
                tenant_id = %tenant_id,
                pseudonym = %pseudonym,
                records = outcome.legacy,
                "Audit records written before erasure existed name an erased user and were left as they are (changing them would break the chain)."
            );
        }
        Ok(outcome)
    }

    /// Rewrites every file holding a record to erase: the closed ones
    /// without the writer's lock, the current one under it. `each` gets
    /// every rewritten file's number and result.
    fn erase_files(
        &self,
        target: &Target<'_>,
        key: &[u8],
        mut each: impl FnMut(Rewritten),
    ) -> io::Result<()> {
        let dir = self.dir.to_path_buf();
        let index = self.index.clone();
        // Every record of the files before the current one has its index
        // entry in the index from here on (requests' entries wait in the
        // writer until its next turn): relocating them below finds them all.
        let current = {
            let mut s = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            s.catch_up();
            s.file_no()
        };
        let mut rewrote = false;
        for (no, path) in files(&dir)? {
            if no >= current {
                break;
            }
            if let Some(r) = rewrite_file(&path, no, target, key, index.as_deref())? {
                rewrote |= r.records > 0;
                each(r);
            }
        }
        // The file being written (and any the writer rotated to since),
        // under the writer's lock.
        {
            let mut s = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            if s.is_holding() {
                return Err(io::Error::other(
                    "a batch waits to be written; try again once the log is writable",
                ));
            }
            s.catch_up();
            for (no, path) in files(&dir)?.into_iter().filter(|(no, _)| *no >= current) {
                if let Some(r) = rewrite_file(&path, no, target, key, index.as_deref())? {
                    if r.records > 0 && no == s.file_no() {
                        s.reopen()?;
                    }
                    rewrote |= r.records > 0;
                    each(r);
                }
            }
        }
        if rewrote && let Some(i) = &index {
            i.clear_stale()?;
        }
        Ok(())
    }
}

/// A line's seq, read from its start (`{"seq":N,`) without parsing it.
fn line_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Erases `target` in one file; `None` if it names nobody to erase.
fn rewrite_file(
    path: &Path,
    file_no: u64,
    target: &Target<'_>,
    key: &[u8],
    index: Option<&Index>,
) -> io::Result<Option<Rewritten>> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // The strings as they appear inside a JSON line (ids and emails are
    // plain ASCII without escapes: see `admin::requests::is_id`).
    let tenant_needle = format!("\"tenant_id\":{}", json_str(target.tenant_id));
    let needles: Vec<Vec<u8>> = std::iter::once(target.user_id)
        .chain(target.email)
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let mut out = Vec::with_capacity(text.len());
    let mut moves: HashMap<u64, Move> = HashMap::new();
    let mut tenants: Vec<String> = Vec::new();
    let mut result = Rewritten {
        records: 0,
        legacy: 0,
    };
    let (mut first, mut last) = (u64::MAX, 0u64);
    let mut at = 0usize;
    while at < text.len() {
        let end = text[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map(|i| at + i + 1);
        let Some(end) = end else {
            // A line still being written (never under the writer's lock
            // for the current file; never in a closed file): kept as is.
            out.extend_from_slice(&text[at..]);
            break;
        };
        let line = &text[at..end - 1];
        let new_offset = out.len() as u64;
        let seq = line_seq(line);
        let candidate =
            contains(line, tenant_needle.as_bytes()) && needles.iter().any(|n| contains(line, n));
        let mut replaced = None;
        if candidate && let Ok(mut record) = serde_json::from_slice::<Record>(line) {
            match subject::erase(&mut record, target, key) {
                Erased::Changed => {
                    let new = serde_json::to_vec(&record).expect("a record serializes");
                    result.records += 1;
                    replaced = Some((new, index.map(|i| i.hasher().hash(&record.user_id))));
                }
                Erased::Legacy => result.legacy += 1,
                Erased::Untouched => {}
            }
        }
        let (written, user) = match &replaced {
            Some((new, user)) => (new.as_slice(), *user),
            None => (line, None),
        };
        if let Some(seq) = seq {
            first = first.min(seq);
            last = last.max(seq);
            if new_offset != at as u64 || written.len() != line.len() || user.is_some() {
                moves.insert(
                    seq,
                    Move {
                        offset: new_offset,
                        len: written.len() as u32,
                        user,
                    },
                );
            }
            if index.is_some()
                && let Some(t) = tenant_of(line)
                && !tenants.contains(&t)
            {
                tenants.push(t);
            }
        }
        out.extend_from_slice(written);
        out.push(b'\n');
        at = end;
    }
    if result.records == 0 {
        return Ok(if result.legacy > 0 {
            Some(result)
        } else {
            None
        });
    }
    if let Some(index) = index {
        // Until the entries below are updated, the index is stale: a
        // crash now makes the next start rebuild it.
        index.mark_stale()?;
    }
    replace_file(path, &out)?;
    if let Some(index) = index {
        let tenants: Vec<u64> = tenants.iter().map(|t| index.hasher().hash(t)).collect();
        index.relocate(file_no, first, last, &moves, &tenants)?;
    }
    Ok(Some(result))
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The tenant id of a line, read without parsing the whole record.
fn tenant_of(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Tenant {
        tenant_id: String,
    }
    serde_json::from_slice::<Tenant>(line)
        .ok()
        .map(|t| t.tenant_id)
        .filter(|t| !t.is_empty())
}

/// Puts `bytes` in `path`'s place atomically: a temporary file beside it,
/// fsync, rename, directory fsync.
fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp: PathBuf = path.with_extension("jsonl.erasing");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
