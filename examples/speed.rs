//! Training-step speed of the denoiser on the CPU: forward (loss) + backward per step, on fixed random batches.
//!
//!     cargo run --release --example speed [-- PRESET BATCH STEPS]      (defaults: small 64 20)
//!
//! Threads follow `RAYON_NUM_THREADS` (default: every core). `WICK_NO_CPU_TUNING=1` skips `tune_cpu_runtime`. Prints one JSON line, comparable with
//! `dit_reference.py` (which also times AdamW; the plain update here is negligible next to it).

use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use wick::config::ModelPreset;
use wick::model::{build_model, flow_matching_loss, param_count, randomize_zero_init, tune_cpu_runtime, ModelSpec};

fn main() -> anyhow::Result<()> {
    let tuning = (std::env::var_os("WICK_NO_CPU_TUNING").is_none()).then(tune_cpu_runtime);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = match args.first().map(String::as_str).unwrap_or("small") {
        "tiny" => ModelPreset::Tiny,
        "small" => ModelPreset::Small,
        "base" => ModelPreset::Base,
        other => bail!("unknown preset {other}"),
    };
    let b: usize = args.get(1).map(|s| s.parse()).transpose().context("BATCH")?.unwrap_or(64);
    let steps: usize = args.get(2).map(|s| s.parse()).transpose().context("STEPS")?.unwrap_or(20);
    let warmup = 3;
    let dev = Device::Cpu;
    let spec = ModelSpec::from_preset(preset, true);
    let (varmap, model) = build_model(spec, &dev, 0)?;
    randomize_zero_init(spec, &varmap, 1)?; // every path live, as mid-training
    let vars = varmap.all_vars();

    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let n = b * 3 * spec.image_size * spec.image_size;
    let shape = (b, 3, spec.image_size, spec.image_size);
    let x0 = Tensor::from_vec((0..n).map(|_| rng.random_range(-1f32..1.0)).collect::<Vec<_>>(), shape, &dev)?;
    let y = Tensor::from_vec((0..b).map(|_| rng.random_range(0..spec.classes as u32)).collect::<Vec<_>>(), b, &dev)?;
    let boxes: Vec<f32> = (0..b * spec.slots * 4).map(|_| rng.random_range(0f32..1.0)).collect();
    let boxes = Tensor::from_vec(boxes, (b, spec.slots, 4), &dev)?;
    let box_classes: Vec<u32> = (0..b * spec.slots).map(|_| rng.random_range(0..=spec.null_class())).collect();
    let box_classes = Tensor::from_vec(box_classes, (b, spec.slots), &dev)?;

    let (mut fwd, mut bwd, mut upd) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_loss = 0f32;
    for step in 0..warmup + steps {
        let t: Vec<f32> = (0..b)
            .map(|_| {
                let z: f32 = StandardNormal.sample(&mut rng);
                1.0 / (1.0 + (-z).exp())
            })
            .collect();
        let t = Tensor::from_vec(t, b, &dev)?;
        let eps: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
        let eps = Tensor::from_vec(eps, shape, &dev)?;
        let t0 = Instant::now();
        let loss = flow_matching_loss(&model, &x0, &t, &eps, &y, &boxes, &box_classes)?;
        last_loss = loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let t2 = Instant::now();
        for var in &vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                var.set(&(var.as_tensor() - (g * 1e-4)?)?)?;
            }
        }
        let t3 = Instant::now();
        if step >= warmup {
            fwd.push((t1 - t0).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
            upd.push((t3 - t2).as_secs_f64());
        }
    }
    // Medians per phase: robust against other processes sharing the cores.
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let total: Vec<f64> = (0..steps).map(|i| fwd[i] + bwd[i] + upd[i]).collect();
    let best = total.iter().copied().fold(f64::INFINITY, f64::min);
    let (fwd, bwd, upd, step) = (median(&mut fwd), median(&mut bwd), median(&mut upd), median(&mut total.clone()));
    println!(
        "{{\"framework\": \"candle\", \"preset\": \"{}\", \"batch\": {b}, \"threads\": {}, \"cpu_tuning\": \"{tuning:?}\", \"params\": {}, \
         \"forward_ms\": {:.1}, \"backward_ms\": {:.1}, \"update_ms\": {:.1}, \"step_ms\": {:.1}, \"best_step_ms\": {:.1}, \
         \"steps_per_s\": {:.3}, \"samples_per_s\": {:.1}, \"last_loss\": {last_loss:.4}}}",
        preset.name(),
        candle_core::utils::get_num_threads(),
        param_count(spec),
        1e3 * fwd,
        1e3 * bwd,
        1e3 * upd,
        1e3 * step,
        1e3 * best,
        1.0 / step,
        b as f64 / step,
    );
    Ok(())
}
