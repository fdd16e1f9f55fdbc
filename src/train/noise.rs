//! Seeded random streams of a run. Every draw of step `s` comes from its own ChaCha stream, a pure
//! function of (run seed, purpose, s): resuming at any step draws exactly what the uninterrupted run drew,
//! with no generator state to save, and accumulated micro-batches draw what one big batch would.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Purposes of the run's random streams (each gets an independent key).
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// Initial weights.
    Init = 1,
    /// Data order (epoch permutations).
    DataOrder = 2,
    /// Noise, timesteps and dropout of training steps.
    StepNoise = 3,
    /// Timesteps and noise of the fixed validation batch.
    Validation = 4,
}

/// A well-mixed 64-bit key from the run seed and a purpose (SplitMix64 finaliser).
pub fn stream_seed(seed: u64, stream: Stream) -> u64 {
    let mut z = seed ^ (stream as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of global step `step` (0-based index of the step being computed).
pub fn step_rng(seed: u64, step: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, Stream::StepNoise));
    rng.set_stream(step);
    rng
}

/// What one training sample draws: its timestep, whether its class and layout are dropped, its noise.
pub struct SampleDraw {
    /// t = sigmoid(n), n ~ N(0, 1): the logit-normal timestep.
    pub t: f32,
    /// Replace the class label by the null class.
    pub drop_class: bool,
    /// Empty the whole layout.
    pub drop_layout: bool,
}

/// Draws, for each of `count` samples in turn, its timestep, dropout decisions and `noise_len` noise values
/// (appended to `noise`). Samples draw in sequence, so two calls of 4 equal one call of 8.
pub fn draw_samples(
    rng: &mut ChaCha8Rng,
    count: usize,
    noise_len: usize,
    class_dropout: f64,
    layout_dropout: f64,
    noise: &mut Vec<f32>,
) -> Vec<SampleDraw> {
    let mut draws = Vec::with_capacity(count);
    noise.reserve(count * noise_len);
    for _ in 0..count {
        let n: f32 = rng.sample(StandardNormal);
        let t = 1.0 / (1.0 + (-n).exp());
        let drop_class = rng.random::<f64>() < class_dropout;
        let drop_layout = rng.random::<f64>() < layout_dropout;
        noise.extend((0..noise_len).map(|_| rng.sample::<f32, _>(StandardNormal)));
        draws.push(SampleDraw { t, drop_class, drop_layout });
    }
    draws
}
