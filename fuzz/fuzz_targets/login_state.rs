//! The OIDC login: the login cookie read from the `Cookie` headers
//! (`sso::cookie`) and the sealed login state in it
//! (`sso::login_state::Signer::open`).
//!
//! Properties:
//! - `cookie` returns a value only for a name that appears exactly once
//!   across every `Cookie` header, and that value is the pair's, trimmed;
//! - a sealed state opens to itself (round trip), and any change to the
//!   sealed text (one byte flipped, inserted, removed, or the text cut)
//!   that is not the same text does not open: the seal is not malleable;
//! - an expired state never opens.
#![no_main]

use costguard::sso::login_state::{COOKIE, LoginState, LoginStateError, Signer};
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const KEY: &[u8] = b"fuzz-login-state-key-0123456789ab";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let signer = Signer::new(KEY);
    if mode & 1 == 0 {
        // Cookie headers as sent.
        let headers = common::headers(rest);
        let pairs: Vec<(String, String)> = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|p| p.trim().split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        let named: Vec<&(String, String)> = pairs.iter().filter(|(k, _)| k == COOKIE).collect();
        let got = costguard::sso::cookie(&headers, COOKIE);
        match named.as_slice() {
            [(_, v)] => assert_eq!(got, Some(v.as_str())),
            _ => assert_eq!(got, None, "{named:?}"),
        }
        if let Some(v) = got {
            // Whatever was sent, only a state this key sealed opens.
            if let Ok(state) = signer.open(v, 0) {
                assert_eq!(signer.open(&signer.seal(&state), 0), Ok(state));
            }
        }
        return;
    }
    // A state from the bytes, sealed, then changed.
    let mut parts = rest.splitn(7, |b| *b == 0);
    let mut next = || text(parts.next().unwrap_or_default());
    let state = LoginState {
        provider: next(),
        state: next(),
        nonce: next(),
        verifier: next(),
        rd: next(),
        tenant: Some(next()).filter(|t| !t.is_empty()),
        expires: 1_000,
    };
    let sealed = signer.seal(&state);
    assert_eq!(signer.open(&sealed, 999).as_ref(), Ok(&state));
    assert_eq!(signer.open(&sealed, 1_001), Err(LoginStateError::Expired));
    let tail = rest.last().copied().unwrap_or(0);
    let mut changed = sealed.clone().into_bytes();
    let at = (tail as usize * 7 + rest.len()) % changed.len().max(1);
    match mode >> 1 & 3 {
        0 => changed[at] ^= 1 << (tail % 7),
        1 => changed.insert(at, b"A-_.=x"[tail as usize % 6]),
        2 => {
            changed.remove(at);
        }
        _ => changed.truncate(at),
    }
    let Ok(changed) = String::from_utf8(changed) else {
        return;
    };
    if changed != sealed {
        assert!(
            signer.open(&changed, 0).is_err(),
            "an altered seal opens: {sealed:?} → {changed:?}"
        );
    }
});
