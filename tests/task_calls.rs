//! What the engine asks of a task, counted: a checkpoint saved with an evaluation takes that evaluation's
//! samples (the grid is not rendered a second time), and a checkpoint without one renders its samples once.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Result;
use candle_core::{Device, Module, Tensor};
use candle_nn::{linear, VarBuilder};
use rand_chacha::ChaCha8Rng;
use wick::config::{MetricMode, RunConfig, StageConfig};
use wick::task::registry::TaskRegistry;
use wick::task::settings::Schema;
use wick::task::*;

/// Calls of `evaluate` and `samples` (one test in this file, so no other run counts here).
static EVALUATIONS: AtomicUsize = AtomicUsize::new(0);
static SAMPLE_RENDERS: AtomicUsize = AtomicUsize::new(0);

/// y = 2x − 1 on a fixed grid of inputs.
struct Points;

impl BatchSource for Points {
    type Batch = Vec<f32>;
    fn batch(&mut self, cursor: u64, size: usize) -> Result<Vec<f32>> {
        Ok((cursor..cursor + size as u64).map(|i| (i % 16) as f32 / 8.0 - 1.0).collect())
    }
}

struct LineTask {
    device: Device,
}

impl LineTask {
    fn open(ctx: &TaskContext) -> Result<Self> {
        Ok(Self { device: ctx.device.clone() })
    }

    fn text(&self, model: &candle_nn::Linear) -> Result<Samples> {
        let x = Tensor::new(&[[0.5f32]], &self.device)?;
        let y = model.forward(&x)?.flatten_all()?.to_vec1::<f32>()?[0];
        Ok(Samples::Text(vec![TextSample { prompt: "f(0.5)=".into(), completion: format!("{y:.3}"), expected: None }]))
    }
}

impl Task for LineTask {
    type Model = candle_nn::Linear;
    type Data = Points;

    fn descriptor() -> TaskDescriptor {
        TaskDescriptor {
            kind: "line".into(),
            summary: "a straight line (tests/task_calls.rs)".into(),
            metrics: vec![MetricSpec::new("error", "error", MetricMode::Min)],
            samples: SampleKind::Text,
            settings: Schema::default(),
        }
    }

    fn build(&self, vb: VarBuilder) -> candle_core::Result<candle_nn::Linear> {
        linear(1, 1, vb.pp("line"))
    }

    fn data(&self, _: &StageConfig, _: u64) -> Result<Points> {
        Ok(Points)
    }

    fn loss(&self, model: &candle_nn::Linear, batch: &Vec<f32>, _: &StageConfig, _: &mut ChaCha8Rng) -> Result<Tensor> {
        let x = Tensor::from_slice(batch, (batch.len(), 1), &self.device)?;
        let target = ((&x * 2.0)? - 1.0)?;
        Ok((model.forward(&x)? - target)?.sqr()?.mean_all()?)
    }

    fn evaluate(&mut self, model: &candle_nn::Linear, _: &EvalContext) -> Result<Option<Evaluation>> {
        EVALUATIONS.fetch_add(1, Ordering::SeqCst);
        let x = Tensor::new(&[[0.5f32]], &self.device)?;
        let error = f64::from((model.forward(&x)?.flatten_all()?.to_vec1::<f32>()?[0] - 0.0).abs());
        let samples = Some(self.text(model)?);
        Ok(Some(Evaluation { metrics: vec![("error".into(), error)], examples: 1, sample_secs: 0.0, samples }))
    }

    fn samples(&mut self, model: &candle_nn::Linear, _: &EvalContext) -> Result<Option<Samples>> {
        SAMPLE_RENDERS.fetch_add(1, Ordering::SeqCst);
        Ok(Some(self.text(model)?))
    }
}

#[test]
fn a_checkpoint_with_an_evaluation_renders_its_samples_once() {
    let runs = tempfile::tempdir().unwrap();
    let stage = |name: &str, eval_every| StageConfig {
        name: name.into(),
        steps: 6,
        lr: 1e-2,
        batch_size: 4,
        log_every: 1,
        eval_every,
        save_every: 3,
        ..StageConfig::default()
    };
    let mut config = RunConfig { name: "line".into(), seed: 3, ..RunConfig::default() };
    config.task.kind = "line".into();
    config.eval.best_metric = "error".into();
    config.checkpoints.keep_last = 100;
    // First stage: evaluated at every checkpoint (steps 3 and 6, the stage end); second: never evaluated
    // (checkpoints at 9 and 12 render their own samples).
    config.stages = vec![stage("evaluated", 3), stage("plain", 0)];
    let tasks = TaskRegistry::builtin().with(LineTask::open);
    let dir = tasks.create_run(runs.path(), &config).unwrap();
    let handle = tasks.start(dir.clone(), wick::train::TrainOptions::default()).unwrap();
    let events: Vec<_> = handle.events.iter().collect();
    handle.join();
    assert!(matches!(events.last(), Some(wick::run::TrainEvent::Finished { step: 12, .. })), "{events:?}");

    let checkpoints = dir.checkpoints().unwrap();
    assert_eq!(checkpoints.iter().map(|c| c.step).collect::<Vec<_>>(), vec![3, 6, 9, 12]);
    for checkpoint in &checkpoints {
        assert!(checkpoint.dir.join("samples.json").is_file(), "{} has no samples", checkpoint.name);
    }
    assert_eq!(EVALUATIONS.load(Ordering::SeqCst), 2, "evaluations at steps 3 and 6");
    assert_eq!(SAMPLE_RENDERS.load(Ordering::SeqCst), 2, "samples rendered for steps 9 and 12 only");
}
