//! Process-wide CPU settings that training speed depends on.
//!
//! - Allocator: candle allocates a fresh buffer for every op result and every gradient (megabytes each at
//!   batch 64). With glibc's defaults such buffers are `mmap`ped, zero-filled page by page on first touch and
//!   unmapped on free (with a TLB shootdown to every core), op after op: on the demo model that doubled the
//!   backward pass. Raising the mmap threshold and disabling heap trimming keeps freed buffers for reuse.
//! - candle's barrier thread pool (its parallel elementwise ops) spin-waits: next to gemm's rayon threads,
//!   wick's kernel pool and any other busy thread (data loader, GUI, other processes) it oversubscribes the
//!   cores, and a step can take several times longer. With `CANDLE_NUM_THREADS=1` it is not created; gemm
//!   (`RAYON_NUM_THREADS`) and wick's fused kernels still use every core, and the steps were also faster on an
//!   idle machine (185 vs 196 ms for the small preset at batch 64).
//! - candle asks for its thread count on every matmul; with `RAYON_NUM_THREADS` unset it recomputes the
//!   physical core count by reading `/proc/cpuinfo` each time (≈ 5 % of a training step of the demo model on 2
//!   cores, all of it in the kernel formatting that file). Setting the variable once, to the count candle would
//!   compute, makes that a lookup.

use std::sync::atomic::{AtomicBool, Ordering};

/// Whether `RAYON_NUM_THREADS` came from the user's environment (then wick never changes it).
static USER_SET_THREADS: AtomicBool = AtomicBool::new(false);

/// What [`tune_cpu_runtime`] applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTuning {
    /// glibc malloc keeps large freed buffers (mmap threshold 64 MiB, no trimming).
    pub allocator: bool,
    /// `CANDLE_NUM_THREADS` was unset and is now `1` (candle's spinning barrier pool is not created).
    pub candle_single_pool: bool,
    /// `RAYON_NUM_THREADS` was unset and is now this count (the one candle would have computed); `None` when
    /// the environment already set it.
    pub pinned_threads: Option<usize>,
}

/// Applies the CPU settings above. Call it first thing in `main`, before spawning threads or running any
/// candle op (the environment variable is read once, when candle first needs its pool). An explicitly set
/// `CANDLE_NUM_THREADS` or `RAYON_NUM_THREADS` is left alone. The heap then stays at its peak size.
pub fn tune_cpu_runtime() -> CpuTuning {
    // Once per process: a second call would take the first one's RAYON_NUM_THREADS for the user's and
    // change the environment again while other threads may be reading it.
    static APPLIED: std::sync::OnceLock<CpuTuning> = std::sync::OnceLock::new();
    *APPLIED.get_or_init(apply_cpu_tuning)
}

fn apply_cpu_tuning() -> CpuTuning {
    let candle_single_pool = std::env::var_os("CANDLE_NUM_THREADS").is_none();
    if candle_single_pool {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let user_set_threads = std::env::var_os("RAYON_NUM_THREADS").is_some();
    USER_SET_THREADS.store(user_set_threads, Ordering::Relaxed);
    let pinned_threads = (!user_set_threads).then(|| {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        threads
    });
    CpuTuning { allocator: tune_allocator(), candle_single_pool, pinned_threads }
}

/// Which of gemm's f32 kernels candle's CPU matmuls use on this CPU: `avx512f`, `fma` (AVX2), `neon` or `scalar`,
/// chosen at run time the way gemm chooses (`is_x86_feature_detected`). Runs on CPUs with different kernels
/// sum in different orders: the same run is bit-identical on one machine, equal within float rounding across
/// kernels.
pub fn matmul_kernel() -> &'static str {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "fma";
        }
    }
    if cfg!(target_arch = "aarch64") {
        return "neon";
    }
    "scalar"
}

/// Sizes the compute threads (candle's matmuls and wick's kernels) to `threads`, a run's `threads` setting;
/// 0 keeps every core. An explicit `RAYON_NUM_THREADS` in the environment wins over both. Call it while no
/// compute runs (before a run's trainer starts): the count is read from the environment.
pub fn set_compute_threads(threads: usize) {
    if threads > 0 && !USER_SET_THREADS.load(Ordering::Relaxed) {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}

/// Limits wick's fused kernels called from the calling thread to `threads` threads, the caller included (0 = no
/// limit). With candle's matmuls run inside a rayon pool of the same size, this holds a run to `threads` cores
/// after the process has started (the environment, read once, cannot change safely while other threads
/// compute). The limit is per thread: other threads (the window, another run) keep theirs.
pub fn limit_kernel_threads(threads: usize) {
    super::cpu::limit_threads_of_this_thread(threads);
}

/// The calling thread's kernel thread limit (see [`limit_kernel_threads`]), to hand on to a helper thread.
pub fn kernel_thread_limit() -> usize {
    super::cpu::thread_limit_of_this_thread()
}

/// Only the allocator part of [`tune_cpu_runtime`]; returns whether it applied (false off glibc).
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
