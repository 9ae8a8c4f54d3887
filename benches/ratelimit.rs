//! Micro-benchmarks of the rate limiter's hot path: a known key, and a never-seen key.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use event_router::ratelimit::{ManualClock, RateLimitConfig, RateLimiter, Strategy, SystemClock};

fn hot_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("check_hot_key");
    for strategy in [
        Strategy::SlidingWindow,
        Strategy::FixedWindow,
        Strategy::TokenBucket,
    ] {
        // The real clock, so the measured cost includes reading the time.
        let rl = RateLimiter::new(1_000, 60_000, Arc::new(SystemClock));
        rl.set_configs(vec![RateLimitConfig {
            source: "github".into(),
            identifier: "*".into(),
            // Large enough that the key is never refused: the allowed path
            // is the one that writes.
            limit: u64::MAX / 4,
            window: 60_000,
            burst: None,
            strategy: Some(strategy),
        }]);
        // Some other keys around, as in a running server.
        for i in 0..10_000 {
            rl.check("github", &format!("user-{i}"));
        }
        group.bench_function(strategy.as_str(), |b| {
            b.iter(|| rl.check(black_box("github"), black_box("octocat")))
        });
    }
    // The same without the system clock read, to show its share (it is a
    // vDSO call whose cost varies a lot between hosts and VMs).
    let clock = Arc::new(ManualClock::new(1_764_170_000_000));
    let rl = RateLimiter::new(u64::MAX / 4, 60_000, clock);
    group.bench_function("sliding_window_manual_clock", |b| {
        b.iter(|| rl.check(black_box("github"), black_box("octocat")))
    });
    group.finish();
}

fn new_key(c: &mut Criterion) {
    let clock = Arc::new(ManualClock::new(1_764_170_000_000));
    let rl = RateLimiter::new(1_000, 60_000, clock.clone());
    let mut next = 0u64;
    c.bench_function("check_new_key", |b| {
        b.iter_custom(|iters| {
            // Names are made before the clock starts, so only the check is
            // timed; the table is emptied between samples so memory stays
            // bounded however many iterations criterion asks for.
            let ids: Vec<String> = (0..iters).map(|i| format!("flood-{}", next + i)).collect();
            next += iters;
            let start = Instant::now();
            for id in &ids {
                black_box(rl.check("github", id));
            }
            let elapsed = start.elapsed();
            clock.advance(3_600_000);
            rl.purge_idle();
            elapsed
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = hot_key, new_key
}
criterion_main!(benches);
