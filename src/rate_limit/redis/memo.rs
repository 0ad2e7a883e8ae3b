//! What a replica remembers between round trips: refusals Redis gave
//! (so a refused bucket, quota or budget is refused again locally until it
//! can pass, without asking), and in leased mode the tokens it took ahead.
//!
//! Both maps are bounded ([`MAX_ENTRIES`]): when full, expired entries go;
//! if it is still full, nothing new is remembered (a refusal is then asked
//! of Redis again, a lease's spare tokens are dropped), which costs round
//! trips, never exactness.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::rate_limit::{Rate, RateStatus, ceil_secs};

/// Entries per map before expired ones are dropped and new ones refused.
pub(super) const MAX_ENTRIES: usize = 100_000;

/// What a remembered entry is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Subject {
    /// A key's rate bucket at a rate (a new rate is a new entry).
    Rate(Arc<str>, Rate),
    /// A tenant's daily quota.
    Quota(Arc<str>),
    /// A tenant's (project `None`) or a project's budget.
    Budget(Arc<str>, Option<Arc<str>>),
}

/// A refusal, held until it could pass.
#[derive(Clone, Copy, Debug)]
pub(super) struct Refusal {
    /// When asking again may succeed.
    pub(super) until: Instant,
    /// The quota's limit (for its headers); unused otherwise.
    pub(super) limit: u64,
}

/// Tokens taken ahead from Redis (leased mode), or a budget seen unspent.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lease {
    /// Tokens left to spend here.
    pub(super) left: u64,
    /// When the rest is dropped.
    pub(super) expires: Instant,
}

/// A bounded map of expiring entries behind a std mutex (held for one map
/// operation, never across an await).
#[derive(Debug)]
pub(super) struct Expiring<V> {
    map: Mutex<HashMap<Subject, V>>,
    expiry: fn(&V) -> Instant,
}

impl<V: Copy> Expiring<V> {
    pub(super) fn new(expiry: fn(&V) -> Instant) -> Self {
        Self {
            map: Mutex::default(),
            expiry,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<Subject, V>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live entry for `subject`.
    pub(super) fn get(&self, subject: &Subject, now: Instant) -> Option<V> {
        let map = self.lock();
        map.get(subject).copied().filter(|v| (self.expiry)(v) > now)
    }

    /// Remembers `value` unless the map is full of live entries.
    pub(super) fn insert(&self, subject: Subject, value: V, now: Instant) {
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES && !map.contains_key(&subject) {
            let expiry = self.expiry;
            map.retain(|_, v| expiry(v) > now);
            if map.len() >= MAX_ENTRIES {
                return;
            }
        }
        map.insert(subject, value);
    }

    /// Drops expired entries.
    pub(super) fn cleanup(&self, now: Instant) {
        let mut map = self.lock();
        let expiry = self.expiry;
        map.retain(|_, v| expiry(v) > now);
        map.shrink_to_fit();
    }

    /// Entries held.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The refusal remembered for `subject`, rendered as the status Redis
/// would give now.
pub(super) fn rate_status(rate: Rate, wait: Duration) -> RateStatus {
    let interval = rate.interval();
    RateStatus {
        limit: rate.limit.get(),
        remaining: 0,
        reset: ceil_secs(wait + interval * (rate.burst.get() - 1)),
        window: rate.period.as_secs().max(1),
        retry_after: Some(ceil_secs(wait).max(1)),
    }
}

/// A quota refusal's status: `limit` a day, `reset` seconds to midnight.
pub(super) fn quota_status(limit: u64, reset: u64) -> RateStatus {
    RateStatus {
        limit: u32::try_from(limit).unwrap_or(u32::MAX),
        remaining: 0,
        reset,
        window: 86_400,
        retry_after: Some(reset.max(1)),
    }
}

/// Takes one token of a live lease, if there is one.
pub(super) fn take(leases: &Expiring<Lease>, subject: &Subject, now: Instant) -> bool {
    let mut map = leases.lock();
    match map.get_mut(subject) {
        Some(l) if l.expires > now && l.left > 0 => {
            l.left -= 1;
            true
        }
        _ => false,
    }
}

/// Gives back a token taken by [`take`] for a request refused later.
pub(super) fn give_back(leases: &Expiring<Lease>, subject: &Subject) {
    if let Some(l) = leases.lock().get_mut(subject) {
        l.left += 1;
    }
}

/// Adds `n` spare tokens to `subject`'s lease, which lives until `expires`
/// (a lease already held keeps its earlier end: tokens are never held
/// longer than a lease's lifetime).
pub(super) fn add(
    leases: &Expiring<Lease>,
    subject: Subject,
    n: u64,
    expires: Instant,
    now: Instant,
) {
    if n == 0 {
        return;
    }
    let mut map = leases.lock();
    if let Some(l) = map.get_mut(&subject)
        && l.expires > now
    {
        l.left += n;
        l.expires = l.expires.min(expires);
        return;
    }
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, l| l.expires > now);
        if map.len() >= MAX_ENTRIES {
            return;
        }
    }
    map.insert(subject, Lease { left: n, expires });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(i: usize) -> Subject {
        Subject::Quota(format!("org-{i}").into())
    }

    #[test]
    fn refusals_expire_and_the_map_stays_bounded() {
        let now = Instant::now();
        let m = Expiring::new(|r: &Refusal| r.until);
        let until = now + Duration::from_secs(1);
        for i in 0..MAX_ENTRIES + 10 {
            m.insert(subject(i), Refusal { until, limit: 1 }, now);
        }
        assert_eq!(m.len(), MAX_ENTRIES, "full of live entries: no more");
        assert!(m.get(&subject(0), now).is_some());
        assert!(m.get(&subject(0), until).is_none(), "expired");
        // Once they expire, new entries push them out.
        m.insert(
            subject(MAX_ENTRIES + 20),
            Refusal {
                until: until + Duration::from_secs(1),
                limit: 1,
            },
            until,
        );
        assert_eq!(m.len(), 1);
        m.cleanup(until + Duration::from_secs(2));
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn a_lease_is_spent_given_back_and_dropped_when_it_ends() {
        let now = Instant::now();
        let leases = Expiring::new(|l: &Lease| l.expires);
        let s = subject(1);
        assert!(!take(&leases, &s, now));
        let end = now + Duration::from_secs(5);
        add(&leases, s.clone(), 2, end, now);
        assert!(take(&leases, &s, now));
        give_back(&leases, &s);
        assert!(take(&leases, &s, now) && take(&leases, &s, now));
        assert!(!take(&leases, &s, now), "spent");
        add(&leases, s.clone(), 3, end + Duration::from_secs(5), now);
        assert!(!take(&leases, &s, end), "a lease ends at its earlier end");
    }
}
