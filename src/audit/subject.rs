//! A record's personal fields, the commitment the chain keeps to them, and
//! their erasure (GDPR: a deleted user's identifiers are pseudonymised in
//! the log without breaking `audit verify`).
//!
//! # The chained form
//!
//! A record written since erasure exists carries `subject_digest` and
//! `subject_salt` (16 random bytes, hex). The personal fields are:
//!
//! 1. `user_id`, 2. `ip_address`, 3. `user_agent`, and in `details` (admin
//!    records): 4. `actor`, 5. `action` (`METHOD /path`: the path names the
//!    user acted on), 6. `target.user_id`, 7. `changes.email`.
//!
//! `subject_digest = SHA-256("costguard-audit-subject-v1\0" ‖ salt ‖ slot₁ …
//! slot₇)`, a slot being `0` for an absent (or non-string) field and `1 ‖
//! len (u64 LE) ‖ bytes` for a string. The chain hash covers the record
//! with those seven fields set to `""`, without `subject_salt` and
//! `subject_seal`, with `subject_digest` and `hash` empty: so it commits to
//! the personal fields only through the digest, and `verify` recomputes the
//! digest from salt and fields (no key needed) to check them.
//!
//! # The erased form
//!
//! Erasure replaces the user's identifiers by a pseudonym
//! (`erased-` + the first 8 bytes of `HMAC(audit key, "costguard-audit-pseudonym\0"
//! ‖ tenant ‖ "\0" ‖ user_id)`, hex: the same for every record of the user,
//! irreversible without the key and then only by guessing), blanks the IP
//! address and user agent of the user's own records, removes the salt (so
//! the digest, a 128-bit-salted hash, can no longer be tested against a
//! guess) and adds `subject_seal`: the first 16 bytes of `HMAC(audit key,
//! "costguard-audit-erased-v1\0" ‖ hash ‖ "\0" ‖ digest of the fields as
//! they now are, unsalted)`. The chain hash is unchanged. `verify` trusts
//! the digest of an erased record; with the key it checks the seal, so a
//! pseudonym changed afterwards (or a salt stripped to pass off altered
//! fields as erased) is detected; without the key it cannot be.
//!
//! Records without `subject_digest` (written before this form) keep the
//! old chain form: hash over the whole line. Erasure cannot touch their
//! fields without breaking the chain; it counts and reports them.

use ring::{digest, hmac};

use super::{Details, Record};
use crate::model::hex;

/// What a pseudonym starts with.
pub const PSEUDONYM_PREFIX: &str = "erased-";

/// The personal fields inside `details`: (key, sub-key).
const DETAIL_FIELDS: [(&str, Option<&str>); 4] = [
    ("actor", None),
    ("action", None),
    ("target", Some("user_id")),
    ("changes", Some("email")),
];

/// Number of personal fields (see the module docs).
const SLOTS: usize = 3 + DETAIL_FIELDS.len();

fn detail<'a>(details: &'a Details, (key, sub): (&str, Option<&str>)) -> Option<&'a str> {
    let Details::Json(v) = details else {
        return None;
    };
    let v = v.get(key)?;
    match sub {
        Some(sub) => v.get(sub)?.as_str(),
        None => v.as_str(),
    }
}

fn detail_mut<'a>(
    details: &'a mut Details,
    (key, sub): (&str, Option<&str>),
) -> Option<&'a mut String> {
    let Details::Json(v) = details else {
        return None;
    };
    let v = v.get_mut(key)?;
    let v = match sub {
        Some(sub) => v.get_mut(sub)?,
        None => v,
    };
    match v {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

/// Whether `details` holds any personal field (admin records do): the
/// chain hash of a record whose details hold none is the line with only
/// the top-level personal values cut out (see `Record::append_to`).
pub(super) fn details_personal(details: &Details) -> bool {
    DETAIL_FIELDS
        .iter()
        .any(|path| detail(details, *path).is_some())
}

/// The record's personal fields, in slot order.
fn values(r: &Record) -> [Option<&str>; SLOTS] {
    let mut out = [None; SLOTS];
    out[0] = Some(r.user_id.as_str());
    out[1] = Some(r.ip_address.as_str());
    out[2] = Some(r.user_agent.as_str());
    for (slot, path) in out[3..].iter_mut().zip(DETAIL_FIELDS) {
        *slot = detail(&r.details, path);
    }
    out
}

fn digest_of(salt: &[u8], values: &[Option<&str>; SLOTS]) -> digest::Digest {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"costguard-audit-subject-v1\0");
    ctx.update(salt);
    for v in values {
        match v {
            None => ctx.update(&[0]),
            Some(s) => {
                ctx.update(&[1]);
                ctx.update(&(s.len() as u64).to_le_bytes());
                ctx.update(s.as_bytes());
            }
        }
    }
    ctx.finish()
}

/// `subject_digest` of `r`'s personal fields with `salt`, hex.
pub fn digest(salt: &[u8], r: &Record) -> String {
    hex(digest_of(salt, &values(r)).as_ref())
}

/// Sets `r` to what its chain hash covers: personal fields `""`, no salt,
/// no seal (`hash` is the caller's).
pub(super) fn blank(r: &mut Record) {
    r.user_id.clear();
    r.ip_address.clear();
    r.user_agent.clear();
    for path in DETAIL_FIELDS {
        if let Some(s) = detail_mut(&mut r.details, path) {
            s.clear();
        }
    }
    r.subject_salt = None;
    r.subject_seal = None;
}

/// The erasure seal of `r` (its fields as they are now, its hash), hex.
pub fn seal(key: &[u8], r: &Record) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(b"costguard-audit-erased-v1\0");
    ctx.update(r.hash.as_bytes());
    ctx.update(b"\0");
    ctx.update(digest_of(&[], &values(r)).as_ref());
    hex(&ctx.sign().as_ref()[..16])
}

/// The pseudonym of `user_id` in `tenant_id` under `key`.
pub fn pseudonym(key: &[u8], tenant_id: &str, user_id: &str) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(b"costguard-audit-pseudonym\0");
    ctx.update(tenant_id.as_bytes());
    ctx.update(b"\0");
    ctx.update(user_id.as_bytes());
    format!("{PSEUDONYM_PREFIX}{}", hex(&ctx.sign().as_ref()[..8]))
}

/// What a record's personal fields are, as `verify` sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// Written before the chained form: the whole line is hashed.
    Legacy,
    /// Salted: the fields match the digest.
    Live,
    /// Pseudonymised; the seal was checked if a key was given.
    Erased,
}

/// Checks `r`'s personal fields against its digest (live records) or its
/// seal (erased records, only with `key`). The chain hash is checked
/// separately ([`Record::compute_hash`]).
pub fn check(r: &Record, key: Option<&[u8]>) -> Result<Subject, &'static str> {
    let Some(digest) = &r.subject_digest else {
        if r.subject_salt.is_some() || r.subject_seal.is_some() {
            return Err("subject salt or seal without a digest (record altered)");
        }
        return Ok(Subject::Legacy);
    };
    match (&r.subject_salt, &r.subject_seal) {
        (Some(salt), None) => {
            let salt = crate::model::unhex(salt).ok_or("unreadable subject salt")?;
            if self::digest(&salt, r) == *digest {
                Ok(Subject::Live)
            } else {
                Err("personal fields altered (subject digest mismatch)")
            }
        }
        (None, Some(seal)) => match key {
            Some(key) if !constant_time_eq(self::seal(key, r).as_bytes(), seal.as_bytes()) => {
                Err("erased record altered (erasure seal mismatch)")
            }
            _ => Ok(Subject::Erased),
        },
        (Some(_), Some(_)) => Err("both a subject salt and an erasure seal (record altered)"),
        (None, None) => Err("subject salt removed without an erasure seal (record altered)"),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who is erased.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// The tenant.
    pub tenant_id: &'a str,
    /// The user's id.
    pub user_id: &'a str,
    /// The user's email, if known.
    pub email: Option<&'a str>,
    /// Their pseudonym ([`pseudonym`]).
    pub pseudonym: &'a str,
}

/// What erasing one record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Erased {
    /// The record does not name the user (or already names the pseudonym).
    Untouched,
    /// Pseudonymised and sealed.
    Changed,
    /// Names the user but is in the legacy form: left as it is.
    Legacy,
}

/// Pseudonymises `target`'s identifiers in `r` (a record of the target's
/// tenant) and seals it with `key`. Idempotent: a record already erased
/// for the target is untouched.
pub fn erase(r: &mut Record, target: &Target<'_>, key: &[u8]) -> Erased {
    if r.tenant_id != target.tenant_id {
        return Erased::Untouched;
    }
    let user = target.user_id;
    let is_email = |s: &str| target.email.is_some_and(|e| e == s);
    let own = r.user_id == user;
    let about = detail(&r.details, ("target", Some("user_id"))) == Some(user);
    let action_names = detail(&r.details, ("action", None))
        .is_some_and(|a| a.split(['/', ' ']).any(|seg| seg == user || is_email(seg)));
    let email_named = detail(&r.details, ("changes", Some("email"))).is_some_and(|e| {
        // An email the user had (the current one, or any an admin set
        // for them over time).
        is_email(e) || about || action_names
    });
    let actor = detail(&r.details, ("actor", None)) == Some(user);
    if !(own || about || action_names || email_named || actor) {
        return Erased::Untouched;
    }
    if r.subject_digest.is_none() {
        return Erased::Legacy;
    }
    let p = target.pseudonym;
    if own {
        r.user_id = p.to_string();
        r.ip_address.clear();
        r.user_agent.clear();
    }
    if actor && let Some(s) = detail_mut(&mut r.details, ("actor", None)) {
        *s = p.to_string();
    }
    if about && let Some(s) = detail_mut(&mut r.details, ("target", Some("user_id"))) {
        *s = p.to_string();
    }
    if email_named && let Some(s) = detail_mut(&mut r.details, ("changes", Some("email"))) {
        *s = p.to_string();
    }
    if action_names && let Some(s) = detail_mut(&mut r.details, ("action", None)) {
        *s = pseudonymise_action(s, target);
    }
    r.subject_salt = None;
    r.subject_seal = Some(seal(key, r));
    Erased::Changed
}

/// `METHOD /a/b/user` with every path segment equal to the user's id (or
/// email) replaced by the pseudonym.
pub fn pseudonymise_action(action: &str, target: &Target<'_>) -> String {
    let (method, path) = action.split_once(' ').unwrap_or(("", action));
    let path: Vec<&str> = path
        .split('/')
        .map(|seg| {
            if seg == target.user_id || target.email.is_some_and(|e| e == seg) {
                target.pseudonym
            } else {
                seg
            }
        })
        .collect();
    let path = path.join("/");
    if method.is_empty() {
        path
    } else {
        format!("{method} {path}")
    }
}

/// Salts for the records: 16 bytes each from SHA-256(seed ‖ counter), the
/// seed from the OS once. A syscall per record would cost more than the
/// hash; the output is unpredictable to anyone without the seed, which
/// never leaves the process.
pub struct Salts {
    seed: [u8; 32],
    counter: u64,
    /// The second half of the last hash, not yet given out (one hash
    /// makes two salts).
    spare: Option<[u8; 16]>,
}

impl std::fmt::Debug for Salts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salts")
    }
}

impl Salts {
    /// Seeded from the OS.
    pub fn new() -> std::io::Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(std::io::Error::other)?;
        Ok(Self {
            seed,
            counter: 0,
            spare: None,
        })
    }

    /// The next salt.
    pub fn next_salt(&mut self) -> [u8; 16] {
        if let Some(salt) = self.spare.take() {
            return salt;
        }
        self.counter += 1;
        let d = crate::model::sha256_parts(&[&self.seed, &self.counter.to_le_bytes()]);
        self.spare = Some(d[16..].try_into().expect("16 bytes"));
        d[..16].try_into().expect("16 bytes")
    }
}

#[cfg(test)]
mod tests;
