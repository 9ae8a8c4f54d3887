//! Cost of `encrypt_payloads`: sealing and opening a typical 6 KB archived event body with
//! AES-256-GCM (plus the base64 text encoding the store keeps).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use event_router::crypto::Cipher;

fn body() -> Vec<u8> {
    let mut body = br#"{"id":"0192","source":"github","payload":{"padding":""#.to_vec();
    body.resize(6 * 1024 - 3, b'x');
    body.extend_from_slice(b"\"}}");
    body
}

fn bench_crypto(c: &mut Criterion) {
    let body = body();
    let cipher = Cipher::new(&[42u8; 32]);
    let sealed = cipher.seal(&body).unwrap();
    let mut g = c.benchmark_group("payload_6kb");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("seal", |b| {
        b.iter(|| cipher.seal(black_box(&body)).unwrap())
    });
    g.bench_function("open", |b| {
        b.iter(|| cipher.open(black_box(&sealed)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_crypto);
criterion_main!(benches);
