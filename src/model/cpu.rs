//! Plumbing of the fused CPU kernels ([`super::ops`], [`super::attention`]): raw f32 slices of CPU tensors and
//! parallel loops over disjoint output chunks on a small thread pool ([`Pool`]).

use std::cell::Cell;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};

use candle_core::{bail, CpuStorage, DType, Layout, Result, Shape, Storage, Tensor};

/// Outputs smaller than this are computed on the calling thread (waking the pool costs more).
const SERIAL_BELOW: usize = 16 * 1024;

thread_local! {
    /// Tests: run the basic-op versions even on the CPU.
    static REFERENCE_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Whether the fused CPU kernels apply to `x` (f32 on the CPU, no autocast); elsewhere the basic-op versions
/// run.
pub(crate) fn fused(x: &Tensor) -> bool {
    x.device().is_cpu()
        && x.dtype() == DType::F32
        && !REFERENCE_ONLY.with(|f| f.get())
        && super::precision::autocast_dtype().is_none()
}

/// Runs `f` with the basic-op versions of every fused op (on this thread), to compare both paths.
#[cfg(test)]
pub(crate) fn with_reference_ops<R>(f: impl FnOnce() -> R) -> R {
    REFERENCE_ONLY.with(|flag| flag.set(true));
    let out = f();
    REFERENCE_ONLY.with(|flag| flag.set(false));
    out
}

/// Errors unless `t` has exactly `dims`, naming `what`.
pub(crate) fn check_dims(what: &str, t: &Tensor, dims: &[usize]) -> Result<()> {
    if t.dims() != dims {
        bail!("{what}: expected shape {dims:?}, got {:?}", t.dims())
    }
    Ok(())
}

/// The contiguous f32 data of a CPU storage under `layout`.
pub(crate) fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: input must be contiguous"),
    }
}

/// Runs `f` on the contiguous f32 data of `t` (made contiguous first if needed).
pub(crate) fn with_data<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(slice(cpu, layout, op)?),
        _ => bail!("{op}: fused kernel needs a CPU tensor"),
    }
}

/// Runs `f(items, outputs)` in parallel over `items` work items. Each output buffer `(data, per_item)` holds
/// `per_item` values per item; `f` receives a range of items and the matching sub-slices of every output
/// (in the order given). Small jobs run on the calling thread.
pub(crate) fn par_items<T: Send, F>(items: usize, outputs: Vec<(&mut [T], usize)>, f: F)
where
    F: Fn(Range<usize>, &mut [&mut [T]]) + Sync,
{
    if items == 0 {
        return;
    }
    let total_len: usize = outputs.iter().map(|(data, _)| data.len()).sum();
    let pool = Pool::global();
    let threads = pool.threads_for_caller();
    let group = items.div_ceil(threads * 4).max(1);
    let n_groups = items.div_ceil(group);
    let mut chunks: Vec<Vec<&mut [T]>> = (0..n_groups).map(|_| Vec::with_capacity(outputs.len())).collect();
    for (data, per_item) in outputs {
        let mut pieces = data.chunks_mut(group * per_item.max(1));
        for chunk in chunks.iter_mut() {
            chunk.push(pieces.next().unwrap_or_default());
        }
    }
    let chunks: Vec<Mutex<Vec<&mut [T]>>> = chunks.into_iter().map(Mutex::new).collect();
    let run = |g: usize| {
        let mut outs = chunks[g].lock().unwrap_or_else(|e| e.into_inner());
        f(g * group..((g + 1) * group).min(items), &mut outs);
    };
    if threads == 1 || items < 2 || total_len < SERIAL_BELOW {
        (0..n_groups).for_each(run);
        return;
    }
    let next = AtomicUsize::new(0);
    pool.run(&|| loop {
        let g = next.fetch_add(1, Ordering::Relaxed);
        if g >= n_groups {
            break;
        }
        run(g);
    });
}

thread_local! {
    /// Set on the pool's worker threads, and on a caller while it runs a job: a nested `run` runs inline.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
    /// The most threads (the caller included) a job posted from this thread may use; 0 = no limit.
    static THREAD_LIMIT: Cell<usize> = const { Cell::new(0) };
}

/// Limits the fused kernels called from this thread to `threads` threads, the caller included (0 = every
/// thread of the pool). Results do not depend on it: the kernels split work into independent items.
pub(crate) fn limit_threads_of_this_thread(threads: usize) {
    THREAD_LIMIT.with(|limit| limit.set(threads));
}

/// This thread's limit (see [`limit_threads_of_this_thread`]); 0 = none.
pub(crate) fn thread_limit_of_this_thread() -> usize {
    THREAD_LIMIT.with(|limit| limit.get())
}

/// A job handed to the workers: a type- and lifetime-erased `&(dyn Fn() + Sync)`.
#[derive(Clone, Copy)]
struct Job(&'static (dyn Fn() + Sync));

/// Shared state of the pool, under one mutex.
struct State {
    /// Bumped for every job.
    generation: u64,
    /// The current job, until the caller has finished its own share.
    job: Option<Job>,
    /// Workers currently inside the job.
    active: usize,
    /// A panic raised by a worker inside the job.
    panicked: bool,
    /// How many workers may be inside the current job at once (the caller's thread limit − 1).
    max_active: usize,
}

/// A small pool of blocking worker threads for the fused kernels.
///
/// Unlike candle's barrier pool, nobody spins: idle workers sleep on a condvar, and the caller works through
/// the job itself and afterwards withdraws it, waiting only for workers that actually joined. A worker that
/// the OS has not scheduled yet (the cores are shared with gemm's rayon threads, the data loader, the GUI)
/// therefore never delays a step; the job just runs on fewer threads.
pub(crate) struct Pool {
    workers: usize,
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
    /// Serialises callers from different threads.
    call: Mutex<()>,
}

impl Pool {
    /// The process-wide pool: `candle_core::utils::get_num_threads() - 1` workers (`RAYON_NUM_THREADS`).
    pub(crate) fn global() -> &'static Pool {
        static POOL: OnceLock<&'static Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let workers = candle_core::utils::get_num_threads().saturating_sub(1);
            let pool: &'static Pool = Box::leak(Box::new(Pool {
                workers,
                state: Mutex::new(State { generation: 0, job: None, active: 0, panicked: false, max_active: 0 }),
                wake: Condvar::new(),
                done: Condvar::new(),
                call: Mutex::new(()),
            }));
            let mut started = 0;
            for i in 0..workers {
                let spawned = std::thread::Builder::new().name(format!("wick-kernels-{i}")).spawn(move || pool.work());
                started += usize::from(spawned.is_ok());
            }
            // Threads that failed to start just never join a job.
            let _ = started;
            pool
        })
    }

    /// Threads a job posted from the calling thread may use, the caller included (its limit, at most the
    /// pool's workers + 1).
    pub(crate) fn threads_for_caller(&self) -> usize {
        let all = self.workers + 1;
        match THREAD_LIMIT.with(|limit| limit.get()) {
            0 => all,
            limit => limit.min(all),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Worker loop: sleep until a new job is posted, join it while it is still offered.
    fn work(&self) {
        IN_POOL.with(|f| f.set(true));
        let mut seen = 0u64;
        loop {
            let job = {
                let mut st = self.lock();
                while st.generation == seen {
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                seen = st.generation;
                match st.job {
                    Some(job) if st.active < st.max_active => {
                        st.active += 1;
                        job
                    }
                    _ => continue,
                }
            };
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (job.0)())).is_ok();
            let mut st = self.lock();
            st.active -= 1;
            st.panicked |= !ok;
            if st.active == 0 {
                self.done.notify_all();
            }
        }
    }

    /// Runs `f` on the calling thread and on every worker that wakes up before the caller is done; returns
    /// once every thread that joined has left `f`. `f` must divide the work itself (e.g. a shared counter).
    pub(crate) fn run(&self, f: &(dyn Fn() + Sync)) {
        let helpers = self.threads_for_caller() - 1;
        if helpers == 0 || IN_POOL.with(|flag| flag.get()) {
            return f();
        }
        let _call = self.call.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the erased reference is only used by workers between `active += 1` and `active -= 1`, and
        // the guard below withdraws the job and waits for `active == 0` before `run` returns or unwinds, so
        // it never outlives `f`.
        let job = Job(unsafe { std::mem::transmute::<&(dyn Fn() + Sync), &'static (dyn Fn() + Sync)>(f) });
        {
            let mut st = self.lock();
            st.generation = st.generation.wrapping_add(1);
            st.job = Some(job);
            st.panicked = false;
            st.max_active = helpers;
        }
        self.wake.notify_all();
        struct Withdraw<'a>(&'a Pool);
        impl Drop for Withdraw<'_> {
            fn drop(&mut self) {
                IN_POOL.with(|flag| flag.set(false));
                let mut st = self.0.lock();
                st.job = None;
                while st.active > 0 {
                    st = self.0.done.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
        let guard = Withdraw(self);
        // Nested parallel loops inside `f` run inline on this thread too.
        IN_POOL.with(|flag| flag.set(true));
        f();
        drop(guard);
        if self.lock().panicked {
            panic!("a wick kernel panicked on a worker thread");
        }
    }
}

/// A zeroed output buffer of `len` values (for kernels that accumulate).
pub(crate) fn buffer(len: usize) -> Vec<f32> {
    vec![0f32; len]
}

/// `outputs` buffers of `len` values each that `f` fills completely, in parallel like [`par_items`] over items of
/// `per_item` values (the last item may be shorter): `f` receives a range of items and the matching
/// uninitialised sub-slices, and must write every element of them (`MaybeUninit::write`). Skipping the
/// zero-fill matters: these kernels are memory-bound.
pub(crate) fn par_fill<F>(outputs: usize, len: usize, per_item: usize, f: F) -> Vec<Vec<f32>>
where
    F: Fn(Range<usize>, &mut [&mut [MaybeUninit<f32>]]) + Sync,
{
    let mut bufs: Vec<Vec<MaybeUninit<f32>>> = (0..outputs)
        .map(|_| {
            let mut v = Vec::with_capacity(len);
            // SAFETY: `MaybeUninit` needs no initialisation, and the capacity is `len`.
            unsafe { v.set_len(len) };
            v
        })
        .collect();
    let items = len.div_ceil(per_item.max(1));
    par_items(items, bufs.iter_mut().map(|b| (b.as_mut_slice(), per_item)).collect(), f);
    bufs.into_iter()
        .map(|v| {
            let mut v = std::mem::ManuallyDrop::new(v);
            // SAFETY: `f` initialised every element (the contract above: each kernel writes all values of
            // every item it is given), `MaybeUninit<f32>` has the layout of `f32`, and pointer, length and
            // capacity come from a live Vec that is not dropped.
            unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f32>(), v.len(), v.capacity()) }
        })
        .collect()
}

/// [`par_fill`] with one output.
pub(crate) fn par_fill1<F>(len: usize, per_item: usize, f: F) -> Vec<f32>
where
    F: Fn(Range<usize>, &mut [MaybeUninit<f32>]) + Sync,
{
    par_fill(1, len, per_item, |range, outs| f(range, &mut *outs[0])).pop().unwrap_or_default()
}

/// Wraps a result vector as a tensor of `shape` on the CPU.
pub(crate) fn cpu_tensor(data: Vec<f32>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(data, shape, &candle_core::Device::Cpu)
}

/// Dot product with 8 independent partial sums, so that it vectorises (the summation order differs from a
/// sequential sum, by rounding only).
#[inline(always)]
pub(crate) fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    for (ca, cb) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for j in 0..8 {
            acc[j] += ca[j] * cb[j];
        }
    }
    let tail: f32 = a[n - n % 8..].iter().zip(&b[n - n % 8..]).map(|(x, y)| x * y).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Sum with 8 independent partial sums (see [`dot8`]).
#[inline(always)]
pub(crate) fn sum8(a: &[f32]) -> f32 {
    let n = a.len();
    let mut acc = [0f32; 8];
    for ca in a.chunks_exact(8) {
        for j in 0..8 {
            acc[j] += ca[j];
        }
    }
    let tail: f32 = a[n - n % 8..].iter().sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Sum of squared deviations from `mean` (see [`dot8`]).
#[inline(always)]
pub(crate) fn sq_dev8(a: &[f32], mean: f32) -> f32 {
    let n = a.len();
    let mut acc = [0f32; 8];
    for ca in a.chunks_exact(8) {
        for j in 0..8 {
            let d = ca[j] - mean;
            acc[j] += d * d;
        }
    }
    let tail: f32 = a[n - n % 8..].iter().map(|v| (v - mean) * (v - mean)).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// The instruction sets a fused kernel is compiled for; the best the CPU has runs (see [`simd_path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SimdPath {
    /// The crate's baseline target (SSE2 on x86-64).
    Baseline,
    /// AVX2 + FMA: 8 lanes.
    Avx2,
    /// AVX-512 (F, VL, DQ, BW) + AVX2 + FMA: 16 lanes.
    Avx512,
}

/// Every path this CPU can run, best last.
pub(crate) fn available_simd_paths() -> Vec<SimdPath> {
    let mut paths = vec![SimdPath::Baseline];
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            paths.push(SimdPath::Avx2);
            if std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512dq")
                && std::is_x86_feature_detected!("avx512bw")
            {
                paths.push(SimdPath::Avx512);
            }
        }
    }
    paths
}

/// A path forced for every thread (tests: 0 = none, else `SimdPath as u8 + 1`).
static FORCED_SIMD_PATH: AtomicUsize = AtomicUsize::new(0);

/// The path the fused kernels take now: the best this CPU has, unless a test forced a lower one.
#[inline]
pub(crate) fn simd_path() -> SimdPath {
    static BEST: OnceLock<SimdPath> = OnceLock::new();
    let best = *BEST.get_or_init(|| available_simd_paths().last().copied().unwrap_or(SimdPath::Baseline));
    match FORCED_SIMD_PATH.load(Ordering::Relaxed) {
        1 => SimdPath::Baseline,
        2 => SimdPath::Avx2.min(best),
        3 => SimdPath::Avx512.min(best),
        _ => best,
    }
}

/// Runs `f` with every fused kernel (on every thread) taking `path`, one such run at a time (tests).
#[cfg(test)]
pub(crate) fn with_simd_path<R>(path: SimdPath, f: impl FnOnce() -> R) -> R {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    FORCED_SIMD_PATH.store(path as usize + 1, Ordering::Relaxed);
    let out = f();
    FORCED_SIMD_PATH.store(0, Ordering::Relaxed);
    out
}

/// Defines a kernel function three times: compiled for AVX-512, for AVX2 + FMA (each chosen at run time when
/// the CPU has it, [`simd_path`]) and for the baseline target. The crate builds for baseline x86-64 (SSE2),
/// where the kernels' loops vectorise 4 lanes wide at best; the AVX2 copy runs 8 wide, the AVX-512 one 16.
/// All copies perform the same IEEE operations (Rust never contracts a multiply and an add into an FMA, and
/// reductions are written with fixed partial sums), so their results agree. Helpers the body calls must be
/// `#[inline(always)]` to be compiled for each path too.
macro_rules! multiversion {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    inner($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    inner($($arg),*)
                }
                match $crate::model::cpu::simd_path() {
                    // SAFETY: simd_path only names a path whose features the CPU has (runtime detection).
                    $crate::model::cpu::SimdPath::Avx512 => return unsafe { avx512($($arg),*) },
                    // SAFETY: as above, AVX2 and FMA.
                    $crate::model::cpu::SimdPath::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::model::cpu::SimdPath::Baseline => {}
                }
            }
            inner($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;

    /// Which threads ran the items of a job large enough to be shared, under this thread's `limit`.
    fn threads_used(limit: usize) -> (HashSet<std::thread::ThreadId>, Vec<f32>) {
        limit_threads_of_this_thread(limit);
        let seen = Mutex::new(HashSet::new());
        let items = 256;
        let per_item = 1024;
        let mut out = vec![0f32; items * per_item];
        par_items(items, vec![(&mut out, per_item)], |range, outs| {
            seen.lock().unwrap().insert(std::thread::current().id());
            for (i, item) in range.clone().enumerate() {
                for (j, v) in outs[0][i * per_item..(i + 1) * per_item].iter_mut().enumerate() {
                    *v = (item * per_item + j) as f32;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        });
        limit_threads_of_this_thread(0);
        (seen.into_inner().unwrap(), out)
    }

    #[test]
    fn a_thread_limit_of_one_keeps_kernels_on_the_calling_thread() {
        let (seen, out) = threads_used(1);
        assert_eq!(seen, HashSet::from([std::thread::current().id()]), "only the caller ran the job");
        assert!(out.iter().enumerate().all(|(i, v)| *v == i as f32), "every item written");
        assert_eq!(Pool::global().threads_for_caller(), Pool::global().workers + 1, "the limit was lifted");
        // Without a limit the same job is correct too (how many workers join depends on the scheduler).
        let (_, unlimited) = threads_used(0);
        assert_eq!(unlimited, out);
    }
}
