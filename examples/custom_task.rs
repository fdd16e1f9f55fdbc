//! Your own model in Wick: a small convolutional autoencoder on procedural 16×16 images (a bright disc or
//! square on a dark background), written only against Wick's public API. Wick brings the stages, AdamW,
//! schedules, clipping, EMA, the NaN guard, checkpoints, exact resume, live curves and the window.
//!
//! ```text
//! cargo run --release --example custom_task                 # train headless into runs/autoencoder-…
//! cargo run --release --example custom_task -- --resume DIR # continue a run exactly
//! cargo run --release --example custom_task -- --window     # the window, with this task in Setup
//! ```

use anyhow::Result;
use candle_core::{Device, Module, Tensor};
use candle_nn::{conv2d, linear, Conv2dConfig, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wick::config::{MetricMode, RunConfig, StageConfig};
use wick::run::RunDir;
use wick::task::registry::TaskRegistry;
use wick::task::settings::Schema;
use wick::task::*;

const SIDE: usize = 16;
const HELD_OUT: u64 = 1 << 40; // held-out images are drawn from indices past this one

/// One procedural image: a disc or a square of random size, place and brightness. Pure function of `index`.
fn image(index: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(index);
    let (cx, cy, r) = (rng.random_range(4.0..12.0), rng.random_range(4.0..12.0), rng.random_range(2.0..5.0f32));
    let (disc, level) = (rng.random_bool(0.5), rng.random_range(0.5..1.0f32));
    (0..SIDE * SIDE)
        .map(|i| {
            let (x, y) = ((i % SIDE) as f32 + 0.5 - cx, (i / SIDE) as f32 + 0.5 - cy);
            let inside = if disc { x * x + y * y <= r * r } else { x.abs() <= r && y.abs() <= r };
            if inside {
                level
            } else {
                -0.8
            }
        })
        .collect()
}

/// Batches of images [B, 1, 16, 16], in an order drawn from the run's data-order seed.
pub struct Images {
    seed: u64,
}

impl BatchSource for Images {
    type Batch = Vec<f32>;
    fn batch(&mut self, cursor: u64, size: usize) -> Result<Vec<f32>> {
        Ok((cursor..cursor + size as u64).flat_map(|i| image(self.seed.wrapping_add(i) % HELD_OUT)).collect())
    }
}

/// The model: two strided convolutions down to a small code, a linear layer back up.
pub struct Autoencoder {
    down1: candle_nn::Conv2d,
    down2: candle_nn::Conv2d,
    up: candle_nn::Linear,
}

impl Autoencoder {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b = x.dim(0)?;
        let code = self.down2.forward(&self.down1.forward(x)?.relu()?)?.relu()?; // [B, width, 4, 4]
        self.up.forward(&code.flatten_from(1)?)?.tanh()?.reshape((b, 1, SIDE, SIDE))
    }
}

/// The task (public so tests/custom_task.rs can train it too).
pub struct AutoencoderTask {
    width: usize,
    device: Device,
    heldout: Tensor,
}

impl AutoencoderTask {
    /// Opens the task of a run: the held-out images, the code width from `[task] width`.
    pub fn open(ctx: &TaskContext) -> Result<Self> {
        let width = ctx.config.task.settings.get("width").and_then(|v| v.as_integer()).unwrap_or(16) as usize;
        let pixels: Vec<f32> = (0..64).flat_map(|i| image(HELD_OUT + i)).collect();
        let heldout = Tensor::from_vec(pixels, (64, 1, SIDE, SIDE), ctx.device)?;
        Ok(Self { width, device: ctx.device.clone(), heldout })
    }

    /// Originals (top row) over reconstructions (bottom row) of the first 8 held-out images, 4× enlarged.
    fn grid(&self, model: &Autoencoder) -> Result<Samples> {
        let originals = self.heldout.narrow(0, 0, 8)?;
        let rows = [originals.flatten_all()?.to_vec1::<f32>()?, model.forward(&originals)?.flatten_all()?.to_vec1()?];
        let (scale, cell) = (4, SIDE * 4 + 2);
        let mut png = image::GrayImage::new((8 * cell) as u32, (2 * cell) as u32);
        for (row, values) in rows.iter().enumerate() {
            for (i, v) in values.iter().enumerate() {
                let (n, y, x) = (i / (SIDE * SIDE), i % (SIDE * SIDE) / SIDE, i % SIDE);
                let shade = image::Luma([((v + 1.0) * 127.5).clamp(0.0, 255.0) as u8]);
                for (dy, dx) in (0..scale).flat_map(|dy| (0..scale).map(move |dx| (dy, dx))) {
                    png.put_pixel((n * cell + x * scale + dx) as u32, (row * cell + y * scale + dy) as u32, shade);
                }
            }
        }
        let mut bytes = Vec::new();
        png.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
        let json = serde_json::to_vec_pretty(&serde_json::json!({"rows": ["held-out", "reconstruction"]}))?;
        Ok(Samples::Image { png: bytes, json })
    }
}

impl Task for AutoencoderTask {
    type Model = Autoencoder;
    type Data = Images;

    fn descriptor() -> TaskDescriptor {
        TaskDescriptor {
            kind: "autoencoder".into(),
            summary: "a convolutional autoencoder on procedural discs and squares (examples/custom_task.rs)".into(),
            metrics: vec![
                MetricSpec::new("psnr", "PSNR (dB)", MetricMode::Max),
                MetricSpec::new("val_mse", "held-out MSE", MetricMode::Min),
            ],
            samples: SampleKind::Image,
            settings: Schema::default().integer("width", "Width", 16, (4, 128), "channels of the code"),
        }
    }

    fn build(&self, vb: VarBuilder) -> candle_core::Result<Autoencoder> {
        let strided = Conv2dConfig { padding: 1, stride: 2, ..Default::default() };
        Ok(Autoencoder {
            down1: conv2d(1, self.width, 3, strided, vb.pp("down1"))?,
            down2: conv2d(self.width, self.width, 3, strided, vb.pp("down2"))?,
            up: linear(self.width * 16, SIDE * SIDE, vb.pp("up"))?,
        })
    }

    fn data(&self, _stage: &StageConfig, order_seed: u64) -> Result<Images> {
        Ok(Images { seed: order_seed })
    }

    fn loss(&self, model: &Autoencoder, batch: &Vec<f32>, _: &StageConfig, _: &mut ChaCha8Rng) -> Result<Tensor> {
        let x = Tensor::from_slice(batch, (batch.len() / (SIDE * SIDE), 1, SIDE, SIDE), &self.device)?;
        Ok((model.forward(&x)? - &x)?.sqr()?.mean_all()?)
    }

    fn evaluate(&mut self, model: &Autoencoder, _: &EvalContext) -> Result<Option<Evaluation>> {
        let mse = f64::from((model.forward(&self.heldout)? - &self.heldout)?.sqr()?.mean_all()?.to_scalar::<f32>()?);
        // Pixels span [-1, 1]: a peak-to-peak range of 2.
        let psnr = 10.0 * (4.0 / mse).log10();
        let metrics = vec![("psnr".into(), psnr), ("val_mse".into(), mse)];
        Ok(Some(Evaluation { metrics, examples: 64, sample_secs: 0.0, samples: Some(self.grid(model)?) }))
    }

    fn samples(&mut self, model: &Autoencoder, _: &EvalContext) -> Result<Option<Samples>> {
        Ok(Some(self.grid(model)?))
    }
}

/// Two stages: a fast start, then a lower rate with an EMA of the weights.
pub fn config() -> Result<RunConfig> {
    let stage = |name: &str, steps, lr, ema_decay| StageConfig {
        name: name.into(),
        steps,
        lr,
        ema_decay,
        batch_size: 32,
        log_every: 5,
        eval_every: 50,
        save_every: 50,
        ..StageConfig::default()
    };
    let mut config = RunConfig { name: "autoencoder".into(), seed: 1, ..RunConfig::default() };
    config.task.kind = "autoencoder".into();
    config.eval.best_metric = "psnr".into();
    config.stages = vec![stage("fast", 200, 3e-3, 0.0), stage("slow", 200, 1e-3, 0.99)];
    Ok(config)
}

fn main() -> Result<()> {
    wick::logging::init("warn");
    let tasks = TaskRegistry::builtin().with(AutoencoderTask::open);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--window") {
        return wick::app::run_native(wick::app::AppOptions { runs_dir: "runs".into(), tasks });
    }
    let (dir, resume) = match args.as_slice() {
        [flag, path] if flag == "--resume" => (RunDir::open(std::path::Path::new(path))?, true),
        _ => (tasks.create_run(std::path::Path::new("runs"), &config()?)?, false),
    };
    let handle = tasks.start(dir.clone(), wick::train::TrainOptions { resume, ..Default::default() })?;
    for event in handle.events.iter() {
        if !matches!(event, wick::run::TrainEvent::Metrics(_)) {
            println!("{}", event.message());
        }
    }
    handle.join();
    println!("run directory: {}", dir.root().display());
    Ok(())
}
