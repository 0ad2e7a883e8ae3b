//! The authorization engine against the naive oracle of
//! `tests/oracle/mod.rs` (the same harness `cargo test --test
//! authz_oracle` runs from a seeded PRNG): every input is one random
//! policy and 16 principals and requests; any disagreement panics with
//! the policy and the request. Every 2^16 inputs it prints the running
//! tally (`oracle: …`, the last one is the run's count of decisions).
#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/oracle/mod.rs"]
mod oracle;

static TALLY: Mutex<(u64, oracle::Tally)> = Mutex::new((
    0,
    oracle::Tally {
        policies: 0,
        refused_policies: 0,
        decisions: 0,
        permits: 0,
        denials: 0,
        no_route: 0,
        by_grant: 0,
    },
));

fuzz_target!(|data: &[u8]| {
    let mut tally = oracle::Tally::default();
    oracle::run(data, 16, &mut tally);
    let mut total = TALLY.lock().unwrap_or_else(|e| e.into_inner());
    let (inputs, t) = &mut *total;
    *inputs += 1;
    t.policies += tally.policies;
    t.refused_policies += tally.refused_policies;
    t.decisions += tally.decisions;
    t.permits += tally.permits;
    t.denials += tally.denials;
    t.no_route += tally.no_route;
    t.by_grant += tally.by_grant;
    if inputs.is_power_of_two() || *inputs % (1 << 16) == 0 {
        eprintln!("oracle: {inputs} inputs, {t:?}");
    }
});
