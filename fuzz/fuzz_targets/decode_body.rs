#![no_main]
//! The body is `event_router_fuzz::bodies::decode_body` (layout and properties documented there), shared
//! with the regression test that replays `tests/fuzz_regressions/decode_body/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| event_router_fuzz::bodies::decode_body(data));
