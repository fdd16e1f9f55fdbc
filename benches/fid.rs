//! Time of the FID pieces at the evaluation's size: fitting a Gaussian to 500 judge-sized (128-d) feature
//! vectors, and the Fréchet distance between two such fits (f64, the matrix square root included).
//! Prints the median of several repetitions.
//!
//! `cargo bench --bench fid` (release).

use std::time::{Duration, Instant};

use wick::eval::GaussianStats;

const COUNT: usize = 500;
const DIM: usize = 128;
const REPEATS: usize = 21;

/// Deterministic correlated features (a splitmix-style generator; no dependency needed for a bench).
fn features(seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut out = Vec::with_capacity(COUNT * DIM);
    for _ in 0..COUNT {
        let shared = uniform();
        for j in 0..DIM {
            out.push(uniform() + shared * (j % 3) as f32 + j as f32 * 0.1);
        }
    }
    out
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let (fa, fb) = (features(11), features(12));
    let fit = |f: &[f32]| GaussianStats::from_features(f, COUNT, DIM).expect("finite features");
    let fits: Vec<Duration> = (0..REPEATS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(fit(&fa));
            start.elapsed()
        })
        .collect();
    let (a, b) = (fit(&fa), fit(&fb));
    let mut fid = 0.0;
    let distances: Vec<Duration> = (0..REPEATS)
        .map(|_| {
            let start = Instant::now();
            fid = std::hint::black_box(a.fid(&b));
            start.elapsed()
        })
        .collect();
    println!("fit {COUNT} × {DIM}-d features: median {:?}", median(fits));
    println!("Fréchet distance at {DIM}-d: median {:?} (FID {fid:.4})", median(distances));
}
