//! Allocator tuning for CPU training.
//!
//! candle allocates a fresh buffer for every op result and every gradient (megabytes each at batch 64). With
//! glibc's defaults such buffers are `mmap`ped, zero-filled page by page on first touch and unmapped on free
//! (with a TLB shootdown to every core), op after op: on the demo model that doubled the backward pass.
//! Raising the mmap threshold and disabling heap trimming keeps freed buffers in the heap for reuse.

/// Makes glibc's malloc keep large freed buffers for reuse (mmap threshold 64 MiB, no heap trimming). Call once
/// at start-up of a process that trains or samples on the CPU; the heap then stays at its peak size.
/// Returns whether the settings were applied (false on non-glibc targets).
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes malloc's tunables; glibc allows calling it at any time.
        unsafe {
            let mmap = mallopt(M_MMAP_THRESHOLD, 64 << 20) == 1 || mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1;
            mmap && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
