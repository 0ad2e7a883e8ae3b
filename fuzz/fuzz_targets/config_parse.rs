//! Configuration TOML (`config::parse`, then `config::from_file`, as
//! startup runs them), with and without `COSTGUARD_*` variables.
//!
//! Properties: never panics; parsing is deterministic (same text, same
//! outcome); a file that validates, rewritten through a TOML round trip,
//! validates again.
#![no_main]

use costguard::config::{self, Env};
use libfuzzer_sys::fuzz_target;

fn outcome(text: &str, env: &Env) -> Result<(), String> {
    let file = config::parse(text, "fuzz.toml", env).map_err(|e| e.to_string())?;
    config::from_file(file).map(|_| ()).map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let empty = Env::from_pairs(Vec::<(String, String)>::new());
    let first = outcome(text, &empty);
    assert_eq!(first, outcome(text, &empty), "not deterministic: {text:?}");
    let env = Env::from_pairs([
        ("COSTGUARD_LISTEN", "127.0.0.1:18080"),
        ("COSTGUARD_POLICY_DIR", "policies"),
    ]);
    let _ = outcome(text, &env);
    if first.is_ok()
        && let Ok(table) = toml::from_str::<toml::Table>(text)
    {
        let rewritten = toml::to_string(&table).unwrap();
        assert_eq!(
            outcome(&rewritten, &empty),
            Ok(()),
            "round trip refused:\n{text:?}\n→ {rewritten:?}"
        );
    }
});
