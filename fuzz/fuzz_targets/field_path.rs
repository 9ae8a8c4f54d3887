#![no_main]
//! The body is `event_router_fuzz::bodies::field_path` (layout and properties documented there), shared
//! with the regression test that replays `tests/fuzz_regressions/field_path/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| event_router_fuzz::bodies::field_path(data));
