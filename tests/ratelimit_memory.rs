//! Memory bound of the rate limiter under a flood of distinct identifiers.
//!
//! Its own test binary (one test, one process) so the resident-set growth it
//! measures is the limiter's alone and not other tests running alongside.

use std::fmt::Write as _;
use std::sync::Arc;

use event_router::ratelimit::{ManualClock, RateLimiter};

const KEYS: usize = 1_000_000;
const BUDGET_BYTES: u64 = 200 * 1024 * 1024;

/// Resident set size from /proc/self/statm (second field, in pages). Page
/// size is 4 KiB on the x86_64 and aarch64 Linux hosts this runs on.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn a_million_distinct_identifiers_stay_under_200_mb() {
    let clock = Arc::new(ManualClock::new(1_764_170_000_000));
    let rl = RateLimiter::new(100, 60_000, clock.clone());
    let before = rss_bytes();

    // One reused buffer, so the identifiers themselves are not counted.
    let mut identifier = String::with_capacity(32);
    for i in 0..KEYS {
        identifier.clear();
        // GitHub-login-like lengths: "flood-user-0000001" is 18 bytes.
        let _ = write!(identifier, "flood-user-{i:07}");
        assert!(rl.check("github", &identifier).allowed);
    }
    assert_eq!(rl.key_count(), KEYS);

    let (Some(before), Some(after)) = (before, rss_bytes()) else {
        eprintln!("no /proc/self/statm on this system; memory not measured");
        return;
    };
    let growth = after.saturating_sub(before);
    println!(
        "rate limiter: {KEYS} keys grew RSS by {:.1} MiB ({} bytes/key)",
        growth as f64 / (1024.0 * 1024.0),
        growth / KEYS as u64
    );
    assert!(
        growth < BUDGET_BYTES,
        "RSS grew by {growth} bytes for {KEYS} keys"
    );

    // And it all goes away again once idle.
    clock.advance(3 * 60_000);
    assert_eq!(rl.purge_idle(), KEYS);
    assert_eq!(rl.key_count(), 0);
}
