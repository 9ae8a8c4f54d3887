#![no_main]
//! The body is `event_router_fuzz::bodies::ingest_prepare` (layout and properties documented there), shared
//! with the regression test that replays `tests/fuzz_regressions/ingest_prepare/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| event_router_fuzz::bodies::ingest_prepare(data));
