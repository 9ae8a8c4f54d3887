//! What every fuzz target shares: the target bodies (`bodies.rs`, which the regression test
//! `tests/it/fuzz_regressions.rs` includes too, so that it runs the same code) and an allocator
//! that turns a huge single allocation into a crash.

use std::alloc::{GlobalAlloc, Layout, System};

pub mod bodies;

/// No input of a few KiB should make the code under test ask for this much at once; libFuzzer's
/// `-rss_limit_mb` covers many smaller allocations, and `-malloc_limit_mb` works only under a
/// sanitizer, so this cap is what catches one huge request in every build.
pub const MAX_ALLOCATION: usize = 64 << 20;

/// The system allocator, refusing single allocations over [`MAX_ALLOCATION`]: the refusal aborts
/// with "memory allocation of N bytes failed", which libFuzzer records as a crash with its input.
pub struct CappedAlloc;

// SAFETY: every call is forwarded unchanged to `System`, except that oversized requests get a
// null pointer, which `GlobalAlloc` permits as the answer to any allocation request.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;
