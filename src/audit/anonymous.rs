//! Anonymous denials, aggregated per source, reason and window.
//!
//! A caller nobody authenticated costs nothing to repeat: one record per
//! failed attempt would let any address fill the disk. So, per window
//! (`audit.anonymous_window`), the first denial of each (source address,
//! reason, status) is recorded in full and the others are only counted;
//! when the window closes, each count above zero becomes one
//! `security.access_denied` record with `details.count`.
//!
//! The table is bounded (`audit.anonymous_max_sources`): once full, further
//! sources share one entry (`ip_address` `*`) until the window closes, so
//! many addresses cannot grow memory or the disk either.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;

use super::{Event, EventType};

/// The address entries share once the table is full.
pub const OVERFLOW_SOURCE: &str = "*";

type Key = (String, &'static str, u16);

/// The open window's counts.
#[derive(Debug)]
pub struct Window {
    length: Duration,
    max_sources: usize,
    /// Denials after the first, per key (0: only the first so far).
    counts: Mutex<HashMap<Key, u64>>,
}

impl Window {
    /// A window of `length`, tracking at most `max_sources` keys.
    pub fn new(length: Duration, max_sources: usize) -> Self {
        Self {
            length,
            max_sources: max_sources.max(1),
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// How long a window lasts.
    pub fn length(&self) -> Duration {
        self.length
    }

    /// Whether this denial is the first of its key in the window (record
    /// it); otherwise it is counted.
    pub fn first(&self, source: &str, reason: &'static str, status: u16) -> bool {
        let source = network_of(source);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let key = (source, reason, status);
        if let Some(n) = counts.get_mut(&key) {
            *n += 1;
            return false;
        }
        if counts.len() >= self.max_sources {
            let overflow = (OVERFLOW_SOURCE.to_string(), reason, status);
            if let Some(n) = counts.get_mut(&overflow) {
                *n += 1;
                return false;
            }
            counts.insert(overflow, 0);
            return true;
        }
        counts.insert(key, 0);
        true
    }

    /// Closes the window: the records of its counts (one per key that saw
    /// more than its first denial), and an empty table for the next one.
    pub fn close(&self) -> Vec<Event> {
        let counts = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()));
        let window = humantime::format_duration(self.length).to_string();
        counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|((source, reason, status), count)| Event {
                ip_address: source,
                ..Event::new(
                    EventType::AccessDenied,
                    json!({
                        "decision": "deny",
                        "reason": reason,
                        "status": status,
                        "aggregated": true,
                        "count": count,
                        "window": window,
                    }),
                )
            })
            .collect()
    }
}

impl Default for Window {
    fn default() -> Self {
        Self::new(Duration::from_secs(10), 10_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Details;

    #[test]
    fn the_first_per_key_is_recorded_the_rest_counted_until_the_window_closes() {
        let w = Window::new(Duration::from_secs(10), 2);
        assert!(w.first("10.0.0.1", "invalid_key", 401));
        assert!(!w.first("10.0.0.1", "invalid_key", 401));
        assert!(!w.first("10.0.0.1", "invalid_key", 401));
        assert!(w.first("10.0.0.1", "missing_credential", 401));
        // Full: a third source shares the overflow entry.
        assert!(w.first("10.0.0.2", "invalid_key", 401));
        assert!(!w.first("10.0.0.3", "invalid_key", 401));
        let mut closed = w.close();
        closed.sort_by(|a, b| a.ip_address.cmp(&b.ip_address));
        assert_eq!(
            closed.len(),
            2,
            "keys with only their first are not repeated"
        );
        let counts: Vec<(&str, u64)> = closed
            .iter()
            .map(|e| match &e.details {
                Details::Json(v) => (e.ip_address.as_str(), v["count"].as_u64().unwrap()),
                Details::Request(_) => unreachable!(),
            })
            .collect();
        assert_eq!(counts, [("*", 1), ("10.0.0.1", 2)]);
        assert!(w.first("10.0.0.1", "invalid_key", 401), "a new window");
    }
}

/// The source a denial counts against: the address, or for IPv6 its /64
/// (one host usually holds a whole /64, and must not get a first record
/// per address in it).
fn network_of(source: &str) -> String {
    match source.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let mut s = v6.segments();
            s[4..].fill(0);
            format!("{}/64", std::net::Ipv6Addr::from(s))
        }
        _ => source.to_string(),
    }
}

#[cfg(test)]
mod network_tests {
    use super::network_of;

    #[test]
    fn ipv6_sources_count_per_64() {
        assert_eq!(network_of("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(
            network_of("2001:db8:1:2:ffff::9"),
            network_of("2001:db8:1:2::7")
        );
        assert_eq!(network_of("10.1.2.3"), "10.1.2.3");
        assert_eq!(network_of("*"), "*");
    }
}
