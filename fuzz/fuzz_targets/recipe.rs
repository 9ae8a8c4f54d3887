#![no_main]
//! The body is `event_router_fuzz::bodies::recipe` (layout and properties documented there), shared
//! with the regression test that replays `tests/fuzz_regressions/recipe/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| event_router_fuzz::bodies::recipe(data));
