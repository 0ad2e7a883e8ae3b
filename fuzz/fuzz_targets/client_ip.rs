//! The client address through trusted proxies (`forward::headers::
//! Hygiene::client_ip`): `X-Forwarded-For` lists (several fields, odd
//! spacing, IPv6, garbage) from trusted and untrusted peers, beside
//! `Forwarded` fields.
//!
//! Properties (a naive statement of README "proxy.trusted_proxies"):
//! - from an untrusted peer, the client is the peer, whatever it sent;
//! - from a trusted peer: walking every `X-Forwarded-For` entry from the
//!   right (last field first), the client is the first entry that is not
//!   a trusted proxy; an unreadable entry stops the walk at the last good
//!   address; all trusted: the leftmost readable one; none: the peer;
//! - `Forwarded` (RFC 7239) is not read: it never changes the answer.
#![no_main]

use std::net::IpAddr;

use costguard::forward::headers::Hygiene;
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

const TRUSTED: [&str; 3] = ["10.0.0.0/8", "::1/128", "fd00::/8"];
const PEERS: [&str; 6] = ["10.1.1.1", "::1", "203.0.113.5", "fd00::7", "192.0.2.1", "::ffff:10.0.0.1"];

fuzz_target!(|data: &[u8]| {
    let Some((&p, rest)) = data.split_first() else {
        return;
    };
    let trusted: Vec<IpNet> = TRUSTED.iter().map(|n| n.parse().unwrap()).collect();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(&ip.to_canonical()));
    let hygiene = Hygiene::new(vec![], trusted.clone());
    let peer: IpAddr = PEERS[p as usize % PEERS.len()].parse().unwrap();
    let mut headers = common::headers(rest);
    let got = hygiene.client_ip(peer, &headers);
    let want = if !hygiene.is_trusted(peer) {
        peer
    } else {
        let mut client = peer;
        let mut entries: Vec<Option<IpAddr>> = Vec::new();
        for v in headers.get_all("x-forwarded-for") {
            match v.to_str() {
                Ok(list) => entries.extend(list.split(',').map(|e| e.trim().parse().ok())),
                Err(_) => entries.push(None),
            }
        }
        for e in entries.iter().rev() {
            match e {
                None => break,
                Some(ip) => {
                    client = *ip;
                    if !is_trusted(*ip) {
                        break;
                    }
                }
            }
        }
        client
    };
    assert_eq!(got, want, "peer {peer}, headers {headers:?}");
    headers.remove("forwarded");
    assert_eq!(hygiene.client_ip(peer, &headers), got, "Forwarded changed the answer");
});
