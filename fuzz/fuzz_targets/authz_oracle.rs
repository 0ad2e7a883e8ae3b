//! The authorization engine against the naive oracle of
//! `tests/oracle/mod.rs` (the same harness `cargo test --test
//! authz_oracle` runs from a seeded PRNG): every input is one random
//! policy and 16 principals and requests; any disagreement panics with
//! the policy and the request.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/oracle/mod.rs"]
mod oracle;

fuzz_target!(|data: &[u8]| {
    let mut tally = oracle::Tally::default();
    oracle::run(data, 16, &mut tally);
});
