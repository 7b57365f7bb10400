//! HTTP header values for a decision: `X-RateLimit-*` as the platform guide shows them, and the
//! IETF `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers).

use std::time::Duration;

/// What a set of headers describes.
#[derive(Debug, Clone, Copy)]
pub struct HeaderInput<'a> {
    /// Policy name shown in the IETF fields (the resource, or the Envoy limit's name).
    pub name: &'a str,
    /// Requests per window (the quota).
    pub quota: u64,
    /// The window.
    pub window: Duration,
    /// Units free now.
    pub remaining: u64,
    /// Time until a full burst is back.
    pub reset_after: Duration,
    /// When denied and a retry can succeed: the wait.
    pub retry_after: Option<Duration>,
    /// The decision's clock, µs since the Unix epoch (for the absolute reset time).
    pub now_unix_us: u64,
}

/// Whole seconds, rounded up so a client that waits that long is never early.
fn ceil_secs(d: Duration) -> u64 {
    d.as_micros().div_ceil(1_000_000) as u64
}

/// A structured-field string: printable ASCII with `"` and `\` escaped; anything else is
/// replaced so the header always parses.
fn sf_string(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

/// The headers, in a fixed order.
pub fn rate_limit_headers(h: &HeaderInput<'_>) -> Vec<(&'static str, String)> {
    let reset_secs = ceil_secs(h.reset_after);
    let reset_at_unix = h.now_unix_us.div_ceil(1_000_000) + reset_secs;
    let name = sf_string(h.name);
    let mut out = vec![
        ("X-RateLimit-Limit", h.quota.to_string()),
        ("X-RateLimit-Remaining", h.remaining.to_string()),
        ("X-RateLimit-Reset", reset_at_unix.to_string()),
        (
            "RateLimit-Policy",
            format!("{name};q={};w={}", h.quota, ceil_secs(h.window).max(1)),
        ),
        (
            "RateLimit",
            format!("{name};r={};t={reset_secs}", h.remaining),
        ),
    ];
    if let Some(retry) = h.retry_after {
        out.push(("Retry-After", ceil_secs(retry).max(1).to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_up_and_quote() {
        let h = rate_limit_headers(&HeaderInput {
            name: "search \"v2\"",
            quota: 60,
            window: Duration::from_secs(60),
            remaining: 0,
            reset_after: Duration::from_millis(59_001),
            retry_after: Some(Duration::from_millis(1)),
            now_unix_us: 1_700_000_000_000_000,
        });
        let get = |n| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("X-RateLimit-Limit"), Some("60"));
        assert_eq!(get("X-RateLimit-Remaining"), Some("0"));
        assert_eq!(get("X-RateLimit-Reset"), Some("1700000060"));
        assert_eq!(
            get("RateLimit-Policy"),
            Some(r#""search \"v2\"";q=60;w=60"#)
        );
        assert_eq!(get("RateLimit"), Some(r#""search \"v2\"";r=0;t=60"#));
        assert_eq!(get("Retry-After"), Some("1"));
    }

    #[test]
    fn no_retry_after_when_allowed() {
        let h = rate_limit_headers(&HeaderInput {
            name: "default",
            quota: 5,
            window: Duration::from_millis(500),
            remaining: 4,
            reset_after: Duration::ZERO,
            retry_after: None,
            now_unix_us: 0,
        });
        assert!(h.iter().all(|(k, _)| *k != "Retry-After"));
        assert!(
            h.iter()
                .any(|(k, v)| *k == "RateLimit-Policy" && v == "\"default\";q=5;w=1")
        );
    }
}
