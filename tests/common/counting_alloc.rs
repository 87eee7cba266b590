//! The counting global allocator the binary installs (`spillway::bench::heap`), for
//! memory-budget assertions: each test binary that asserts on the heap installs it too.

// Not every test binary that includes `common` installs it.
#[allow(unused_imports)]
pub use spillway::bench::heap::CountingAllocator as CountingAlloc;

/// Heap bytes live now.
pub fn live_bytes() -> usize {
    spillway::bench::heap::live_bytes() as usize
}

/// Highest live heap bytes since the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    spillway::bench::heap::peak_bytes() as usize
}

/// Starts a new peak measurement from the bytes live now.
pub fn reset_peak() {
    spillway::bench::heap::reset_peak();
}
