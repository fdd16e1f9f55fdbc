//! Time of the FID pieces at the evaluation's size: fitting a Gaussian to 500 judge-sized (128-d) feature
//! vectors, and the Fréchet distance between two such fits (f64, the matrix square root included).
//! Prints the median of several repetitions.
//!
//! `cargo bench --bench fid` (release).

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wick::eval::GaussianStats;

const COUNT: usize = 500;
const DIM: usize = 128;
const REPEATS: usize = 21;

/// Deterministic correlated features (the same recipe as the FID tests).
fn features(seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(COUNT * DIM);
    for _ in 0..COUNT {
        let shared: f32 = rng.random_range(-1.0..1.0);
        for j in 0..DIM {
            let own: f32 = rng.random_range(-1.0..1.0);
            out.push(own + shared * (j % 3) as f32 + j as f32 * 0.1);
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
