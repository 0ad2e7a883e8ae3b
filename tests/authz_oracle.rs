//! The authorization engine against a naive oracle written from the
//! contract (`tests/oracle/mod.rs`): random policies, principals (roles,
//! scopes, project-scoped grants with conditions) and requests (paths,
//! queries, client addresses). The same harness runs millions of cases in
//! the `authz_oracle` fuzz target (see README "Fuzzing").

mod oracle;

/// splitmix64: a seeded, dependency-free byte stream.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[test]
fn engine_agrees_with_the_oracle_on_random_policies_principals_and_requests() {
    // COSTGUARD_ORACLE_SEED reproduces a run; COSTGUARD_ORACLE_POLICIES scales it.
    let seed = std::env::var("COSTGUARD_ORACLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0c05_76ad);
    let policies: usize = std::env::var("COSTGUARD_ORACLE_POLICIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    let mut rng = SplitMix(seed);
    let mut tally = oracle::Tally::default();
    let mut buf = vec![0u8; 8192];
    for _ in 0..policies {
        rng.fill(&mut buf);
        oracle::run(&buf, 60, &mut tally);
    }
    eprintln!("oracle (seed {seed:#x}): {tally:?}");
    // The generator must reach every kind of outcome, or the agreement
    // above says little.
    assert!(tally.decisions >= 20_000, "{tally:?}");
    assert!(tally.permits > tally.decisions / 20, "{tally:?}");
    assert!(tally.denials > tally.decisions / 20, "{tally:?}");
    assert!(tally.no_route > 0, "{tally:?}");
    assert!(tally.by_grant > 100, "{tally:?}");
    assert!(tally.refused_policies > 0, "{tally:?}");
}
