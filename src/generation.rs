//! Cache generations: the tombstone that keeps a racing load from bringing
//! an invalidated entry back.
//!
//! A cache load reads the store, then inserts what it read. If an
//! invalidation (a key revoked on another replica, say) lands between the
//! read and the insert, the insert would put the old value back until its
//! TTL. So every invalidation bumps the cache's generation first, and a
//! load notes the generation before it reads and evicts what it inserted if
//! the generation moved meanwhile. Invalidations are rare (admin writes),
//! so one counter per cache is enough: a bump costs the loads in flight
//! one extra store read, never a stale entry.

use std::sync::atomic::{AtomicU64, Ordering};

/// A cache's invalidation count. See the module doc.
#[derive(Debug, Default)]
pub struct Generation(AtomicU64);

impl Generation {
    /// The generation to note before a load reads the store.
    pub fn current(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Called before evicting: loads that began earlier will not keep
    /// what they read.
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether an invalidation happened since `noted` (the load's result
    /// may be stale and must not stay cached).
    pub fn moved_since(&self, noted: u64) -> bool {
        self.current() != noted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_is_seen_by_loads_that_began_before_it() {
        let g = Generation::default();
        let noted = g.current();
        assert!(!g.moved_since(noted));
        g.bump();
        assert!(g.moved_since(noted));
        assert!(!g.moved_since(g.current()));
    }
}
