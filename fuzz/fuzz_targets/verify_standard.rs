#![no_main]
//! The body is `event_router::fuzzing::verify_standard` (layout and properties documented there), shared with
//! the regression test that replays `tests/fuzz_regressions/verify_standard/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| event_router_fuzz::fuzzing::verify_standard(data));
