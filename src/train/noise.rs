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
    /// t = sigmoid(logit_mean + n), n ~ N(0, 1): the logit-normal timestep.
    pub t: f32,
    /// Replace the class label by the null class.
    pub drop_class: bool,
    /// Empty the whole layout.
    pub drop_layout: bool,
}

/// How a batch's samples are drawn: the timestep distribution's location and the dropout probabilities.
#[derive(Debug, Clone, Copy, Default)]
pub struct DrawSettings {
    /// Location of the logit-normal timestep distribution (0 = the reference's, median t = 0.5; negative
    /// moves training towards low noise, where fine detail is drawn).
    pub timestep_logit_mean: f32,
    /// Probability of replacing the class by the null class.
    pub class_dropout: f64,
    /// Probability of dropping the whole layout.
    pub layout_dropout: f64,
}

impl DrawSettings {
    /// What a training stage draws.
    pub fn of_stage(stage: &crate::config::StageConfig) -> Self {
        Self {
            timestep_logit_mean: stage.timestep_logit_mean as f32,
            class_dropout: stage.class_dropout,
            layout_dropout: stage.layout_dropout,
        }
    }
}

/// Draws, for each of `count` samples in turn, its timestep, dropout decisions and `noise_len` noise values
/// (appended to `noise`). Samples draw in sequence, so two calls of 4 equal one call of 8.
pub fn draw_samples(
    rng: &mut ChaCha8Rng,
    count: usize,
    noise_len: usize,
    settings: DrawSettings,
    noise: &mut Vec<f32>,
) -> Vec<SampleDraw> {
    let mut draws = Vec::with_capacity(count);
    noise.reserve(count * noise_len);
    for _ in 0..count {
        let n: f32 = rng.sample(StandardNormal);
        let logit = settings.timestep_logit_mean + n;
        let t = 1.0 / (1.0 + (-logit).exp());
        let drop_class = rng.random::<f64>() < settings.class_dropout;
        let drop_layout = rng.random::<f64>() < settings.layout_dropout;
        noise.extend((0..noise_len).map(|_| rng.sample::<f32, _>(StandardNormal)));
        draws.push(SampleDraw { t, drop_class, drop_layout });
    }
    draws
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timesteps(logit_mean: f32) -> Vec<f32> {
        let mut rng = step_rng(7, 3);
        let settings = DrawSettings { timestep_logit_mean: logit_mean, ..DrawSettings::default() };
        draw_samples(&mut rng, 200, 4, settings, &mut Vec::new()).iter().map(|d| d.t).collect()
    }

    #[test]
    fn the_timestep_logit_mean_shifts_every_draw_by_the_same_logit() {
        let centred = timesteps(0.0);
        let low_noise = timesteps(-1.0);
        let logit = |t: f32| (t / (1.0 - t)).ln();
        for (a, b) in centred.iter().zip(&low_noise) {
            assert!((logit(*b) - (logit(*a) - 1.0)).abs() < 1e-3, "{a} → {b}");
        }
        let median = |mut v: Vec<f32>| {
            v.sort_by(f32::total_cmp);
            v[v.len() / 2]
        };
        assert!((median(centred) - 0.5).abs() < 0.08);
        // sigmoid(-1) = 0.27: the shifted draws centre on lower noise.
        assert!((median(low_noise) - 0.269).abs() < 0.08);
    }
}
