//! The ingest hot path minus the commit: verify + decode + normalize + serialize, per provider,
//! on realistic payloads (the GitHub one is the 5 KB pull_request example), and the compression
//! of the stored event.

use std::hint::black_box;

use axum::http::{HeaderMap, HeaderValue};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use event_router::clock::now_ms;
use event_router::config::{Config, Secret};
use event_router::event::serialize_event;
use event_router::ingest::{self, Prepared, Source};
use event_router::providers::standard::StandardSigner;
use event_router::providers::{RequestLine, github, linear, slack};
use event_router::store::packed::Packed;

fn source(name: &str, secret: &str) -> Source {
    let mut cfg = Config::default().sources[name].clone();
    cfg.secret = Some(Secret(secret.into()));
    Source::from_config(name, &cfg).unwrap()
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn run(c: &mut Criterion, name: &str, src: &Source, h: &HeaderMap, body: &[u8]) {
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            let now = now_ms();
            match ingest::prepare(
                src,
                RequestLine::post("/webhook/bench"),
                h,
                black_box(body),
                "127.0.0.1",
                now,
                &|_| false,
                &mut event_router::event::new_event_id,
            ) {
                Ok(Prepared::Event {
                    event, raw_json, ..
                }) => black_box(serialize_event(&event, raw_json.then_some(body))),
                _ => panic!("bench request refused"),
            }
        })
    });
    g.finish();
}

/// Compressing the stored event for the SQLite store (done on the request's task).
fn pack(c: &mut Criterion, src: &Source, h: &HeaderMap, body: &[u8]) {
    let Ok(Prepared::Event {
        event, raw_json, ..
    }) = ingest::prepare(
        src,
        RequestLine::post("/webhook/bench"),
        h,
        body,
        "127.0.0.1",
        now_ms(),
        &|_| false,
        &mut event_router::event::new_event_id,
    )
    else {
        panic!("bench request refused")
    };
    let stored = bytes::Bytes::from(serialize_event(&event, raw_json.then_some(body)));
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Bytes(stored.len() as u64));
    g.bench_function("pack_github_pull_request_5k", |b| {
        b.iter(|| black_box(Packed::new(black_box(&stored))))
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let gh_body = include_bytes!("../examples/github-pull_request.json");
    let gh = source("github", "bench-secret");
    let h = headers(&[
        ("content-type", "application/json".into()),
        ("x-github-event", "pull_request".into()),
        (
            "x-github-delivery",
            "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
        ),
        ("user-agent", "GitHub-Hookshot/abc".into()),
        (
            "x-hub-signature-256",
            github::sign(b"bench-secret", gh_body),
        ),
    ]);
    run(c, "github_pull_request_5k", &gh, &h, gh_body);
    pack(c, &gh, &h, gh_body);

    let mut lin: serde_json::Value =
        serde_json::from_slice(include_bytes!("../examples/linear-issue.json")).unwrap();
    // Far in the future so the replay window never expires while benchmarking.
    let ts = now_ms() + 3_000;
    lin["webhookTimestamp"] = ts.into();
    let lin_body = serde_json::to_vec(&lin).unwrap();
    let li = source("linear", "bench-secret");
    let h = headers(&[
        ("content-type", "application/json".into()),
        ("linear-delivery", "d1".into()),
        ("linear-signature", linear::sign(b"bench-secret", &lin_body)),
    ]);
    run(c, "linear_issue", &li, &h, &lin_body);

    let sl_body = include_bytes!("../examples/slack-message.json");
    let sl = source("slack", "bench-secret");
    let now_s = now_ms() / 1000;
    let h = headers(&[
        ("content-type", "application/json".into()),
        ("x-slack-request-timestamp", now_s.to_string()),
        (
            "x-slack-signature",
            slack::sign(b"bench-secret", now_s, sl_body),
        ),
    ]);
    run(c, "slack_event_callback", &sl, &h, sl_body);

    let in_body = include_bytes!("../examples/internal-build.json");
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let int = source("internal", secret);
    let signer = StandardSigner::from_secret(secret).unwrap();
    let h = headers(&[
        ("content-type", "application/json".into()),
        ("webhook-id", "msg_1".into()),
        ("webhook-timestamp", now_s.to_string()),
        ("webhook-signature", signer.sign("msg_1", now_s, in_body)),
    ]);
    run(c, "internal_standard", &int, &h, in_body);
}

criterion_group!(benches, bench);
criterion_main!(benches);
