//! The login endpoints' `rd` check (`sso::safe_redirect`).
//!
//! Property: the target it returns is `rd` itself or `/`, and a browser
//! resolving it against this origin (once as sent, and again after one
//! and two rounds of percent-decoding, as lenient servers and frameworks
//! do) never leaves the origin.
#![no_main]

use libfuzzer_sys::fuzz_target;
use url::Url;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(rd) = std::str::from_utf8(data) else {
        return;
    };
    let out = costguard::sso::safe_redirect(Some(rd));
    assert!(out == rd || out == "/", "{rd:?} → {out:?}");
    let base = Url::parse("https://costguard.example:8443/auth/login?x=1").unwrap();
    let mut forms = vec![out.as_bytes().to_vec()];
    if let Some(once) = common::percent_decode(out.as_bytes()) {
        if let Some(twice) = common::percent_decode(&once) {
            forms.push(twice);
        }
        forms.push(once);
    }
    for form in forms {
        let Ok(form) = String::from_utf8(form) else {
            continue;
        };
        if let Ok(target) = base.join(&form) {
            assert_eq!(
                target.origin(),
                base.origin(),
                "{rd:?} → {out:?} ({form:?}) leaves the origin: {target}"
            );
        }
    }
});
