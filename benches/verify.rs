//! Cost of verifying each provider scheme on a typical 5 KB webhook body.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use event_router::providers::standard::{self, StandardSigner};
use event_router::providers::{SecretSet, github, linear, slack};

const SECRET: &str = "bench-secret-0123456789";
const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NOW: i64 = 1_764_170_000;

fn body() -> Vec<u8> {
    let mut body = br#"{"action":"opened","padding":""#.to_vec();
    body.resize(5 * 1024 - 2, b'x');
    body.extend_from_slice(b"\"}");
    body
}

fn bench_verify(c: &mut Criterion) {
    let body = body();
    let hmac = SecretSet::hmac_from_list(SECRET).unwrap();
    let standard = standard::secrets_from_list(STD_SECRET).unwrap();
    let signer = StandardSigner::from_secret(STD_SECRET).unwrap();
    let now_ms = NOW * 1000;
    let ts = NOW.to_string();
    let ts_ms = now_ms.to_string();

    let gh_sig = github::sign(SECRET.as_bytes(), &body);
    let lin_sig = linear::sign(SECRET.as_bytes(), &body);
    let slack_sig = slack::sign(SECRET.as_bytes(), NOW, &body);
    let std_sig = signer.sign("msg_bench", NOW, &body);

    let mut g = c.benchmark_group("verify_5KB");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("github", |b| {
        b.iter(|| github::verify(&hmac, Some(black_box(gh_sig.as_bytes())), black_box(&body)))
    });
    g.bench_function("linear", |b| {
        b.iter(|| {
            linear::verify(&hmac, Some(black_box(lin_sig.as_bytes())), black_box(&body))?;
            linear::check_timestamp(Some(black_box(ts_ms.as_bytes())), None, now_ms)
        })
    });
    g.bench_function("slack", |b| {
        b.iter(|| {
            slack::verify(
                &hmac,
                Some(black_box(slack_sig.as_bytes())),
                Some(black_box(ts.as_bytes())),
                black_box(&body),
                NOW,
            )
        })
    });
    g.bench_function("standard", |b| {
        b.iter(|| {
            standard::verify(
                &standard,
                Some(black_box(b"msg_bench".as_slice())),
                Some(black_box(ts.as_bytes())),
                Some(black_box(std_sig.as_bytes())),
                black_box(&body),
                NOW,
            )
        })
    });
    g.bench_function("standard_sign", |b| {
        b.iter(|| signer.sign(black_box("msg_bench"), NOW, black_box(&body)))
    });
    g.finish();
}

criterion_group!(benches, bench_verify);
criterion_main!(benches);
