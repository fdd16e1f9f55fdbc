//! One optimizer step, the part that does not depend on where batches come from: each micro-batch's loss
//! checked and back-propagated into summed gradients, then the global gradient norm, the non-finite guard,
//! clipping, AdamW and the EMA. The trainer and `wick bench` both run exactly this, so the bench times the
//! work a training step does.

use std::collections::HashMap;
use std::ops::Range;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::checkpointing::NamedVars;
use super::ema::Ema;
use super::optimizer::{clip_grads, global_grad_norm, AdamW};
use crate::task::LossShard;

/// What one step did.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// The update was applied.
    Applied {
        /// Mean loss over the micro-batches.
        loss: f64,
        /// Global gradient norm before clipping.
        grad_norm: f64,
    },
    /// Something was not finite; the update was skipped.
    Skipped {
        /// What was not finite, in words.
        what: String,
        /// The mean loss, when it was finite.
        loss: Option<f64>,
        /// The gradient norm, when it was computed.
        grad_norm: Option<f64>,
    },
}

/// Where a micro-batch of `batch` examples is split into loss shards on `device` (see
/// [`crate::task::Task::loss_shards`]): on the CPU an even number of shards of about [`SHARD_EXAMPLES`]
/// examples, at most [`MAX_SHARDS`] (batch 64: 4 × 16; batch 32: 2 × 16; batch 24: 2 × 12; batch 256: 8 ×
/// 32), two from 16 examples up, one below; one shard off the CPU, where one big batch keeps the device busy.
/// A function of the batch size only, so a run's results do not depend on its thread count.
pub fn shard_ranges(batch: usize, device: &Device) -> Vec<Range<usize>> {
    let shards = match batch {
        _ if !device.is_cpu() => 1,
        b if b < SHARD_EXAMPLES => 1,
        b => (2 * (b / (2 * SHARD_EXAMPLES))).clamp(2, MAX_SHARDS),
    };
    let (base, extra) = (batch / shards, batch % shards);
    let mut start = 0;
    (0..shards)
        .map(|i| {
            let len = base + usize::from(i < extra);
            start += len;
            start - len..start
        })
        .collect()
}

/// Examples a CPU loss shard aims for: measured on `small` at batch 64 (2 threads, AMD EPYC), shards of 16
/// ran about 5 % faster than shards of 8 (larger matrices for the matmul kernels), still two per thread.
pub const SHARD_EXAMPLES: usize = 16;
/// Most loss shards per micro-batch.
pub const MAX_SHARDS: usize = 8;

/// Gradients summed over a step's micro-batches, with the first non-finite loss met.
#[derive(Default)]
pub struct GradAccumulator {
    grads: HashMap<String, Tensor>,
    loss_sum: f64,
    micro_batches: usize,
    bad: Option<String>,
}

/// What one shard's forward and backward gave.
enum ShardResult {
    /// Its loss and the gradients of the trainable parameters (in their order; `None` = not reached).
    Finite { loss: f64, grads: Vec<Option<Tensor>> },
    /// Its loss was not finite; no backward ran.
    NotFinite(f64),
}

/// Computes one shard's loss and, when finite, the gradients of `weight · scale · loss`. The gradient store
/// (which holds every activation's gradient) is dropped here, keeping only the parameters'.
fn run_shard(shard: LossShard<'_>, scale: f64, trainable: &NamedVars) -> Result<ShardResult> {
    let weight = shard.weight;
    let factor = weight * scale;
    let loss = shard.compute()?;
    let value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
    if !value.is_finite() {
        return Ok(ShardResult::NotFinite(value));
    }
    let scaled = if factor != 1.0 { (loss * factor)? } else { loss };
    let store = scaled.backward()?;
    let grads = trainable.iter().map(|(_, var)| store.get(var.as_tensor()).cloned()).collect();
    Ok(ShardResult::Finite { loss: value * weight, grads })
}

/// Runs `f` with the fused kernels of this thread held to `threads` threads, restoring the limit after.
fn with_kernel_threads<R>(threads: usize, f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            crate::model::limit_kernel_threads(self.0);
        }
    }
    let _restore = Restore(crate::model::kernel_thread_limit());
    crate::model::limit_kernel_threads(threads);
    f()
}

impl GradAccumulator {
    /// The summed loss and gradients so far (tests).
    #[cfg(test)]
    pub(crate) fn into_parts(self) -> (f64, HashMap<String, Tensor>) {
        (self.loss_sum, self.grads)
    }

    /// Whether a micro-batch's loss was not finite (the step will be skipped; later micro-batches need no
    /// backward pass).
    pub fn is_bad(&self) -> bool {
        self.bad.is_some()
    }

    /// Computes micro-batch `micro`'s loss `shards` and, when every one is finite, adds their gradients (of
    /// `loss / grad_accum`) for the `trainable` parameters. Several shards run in parallel on the current
    /// rayon pool, each on one thread (its kernels held to their share of the pool); their gradients are
    /// added in shard order.
    pub fn add(
        &mut self,
        micro: usize,
        shards: Vec<LossShard<'_>>,
        grad_accum: usize,
        trainable: &NamedVars,
    ) -> Result<()> {
        if self.is_bad() {
            return Ok(());
        }
        let scale = 1.0 / grad_accum.max(1) as f64;
        let count = shards.len();
        let results: Vec<Result<ShardResult>> = if count <= 1 {
            shards.into_iter().map(|shard| run_shard(shard, scale, trainable)).collect()
        } else {
            let threads_each = (rayon::current_num_threads() / count).max(1);
            shards
                .into_par_iter()
                .map(|shard| with_kernel_threads(threads_each, || run_shard(shard, scale, trainable)))
                .collect()
        };
        let mut loss = 0.0;
        let mut shard_grads = Vec::with_capacity(count);
        for (index, result) in results.into_iter().enumerate() {
            match result? {
                ShardResult::NotFinite(value) => {
                    let shard = if count > 1 { format!(" (shard {} of {count})", index + 1) } else { String::new() };
                    self.bad = Some(format!("the loss of micro-batch {micro}{shard} is {value}"));
                    return Ok(());
                }
                ShardResult::Finite { loss: value, grads } => {
                    loss += value;
                    shard_grads.push(grads);
                }
            }
        }
        // Each parameter's shard gradients summed in shard order (parameters in parallel).
        let summed = (0..trainable.len())
            .into_par_iter()
            .map(|p| {
                shard_grads.iter().map(|grads| grads[p].as_ref()).try_fold(None, |acc: Option<Tensor>, g| {
                    match (acc, g) {
                        (Some(acc), Some(g)) => (acc + g).map(Some),
                        (acc, g) => Ok(acc.or_else(|| g.cloned())),
                    }
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.loss_sum += loss;
        self.micro_batches += 1;
        for ((name, _), grad) in trainable.iter().zip(summed) {
            if let Some(g) = grad {
                let sum = match self.grads.remove(name) {
                    Some(acc) => (acc + g)?,
                    None => g,
                };
                self.grads.insert(name.clone(), sum);
            }
        }
        Ok(())
    }
}

/// How a step updates the weights.
#[derive(Debug, Clone, Copy)]
pub struct UpdateSettings {
    /// Learning rate of this step.
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient norm bound (0 = no clipping).
    pub grad_clip: f64,
    /// EMA decay of the stage (0 = the average, once it exists, follows the weights).
    pub ema_decay: f64,
}

/// What a step updates: the optimizer, the average, and every parameter of the model (the EMA averages all of
/// them, trained or frozen).
pub struct Updated<'a> {
    /// The optimizer, holding its moments.
    pub optimizer: &'a mut AdamW,
    /// The weights' moving average.
    pub ema: &'a mut Ema,
    /// EMA updates so far (for its warm-up); incremented when the EMA is updated.
    pub ema_updates: &'a mut u64,
    /// Every parameter of the model.
    pub params: &'a NamedVars,
}

/// Finishes a step: the global gradient norm, the non-finite guard (naming the first non-finite gradient),
/// clipping, the AdamW update of `trainable` and the EMA of all parameters.
pub fn apply_step(
    accumulated: GradAccumulator,
    trainable: &NamedVars,
    settings: UpdateSettings,
    updated: Updated<'_>,
) -> Result<StepOutcome> {
    let GradAccumulator { mut grads, loss_sum, micro_batches, bad } = accumulated;
    if let Some(what) = bad {
        return Ok(StepOutcome::Skipped { what, loss: None, grad_norm: None });
    }
    let loss = loss_sum / micro_batches.max(1) as f64;
    let grad_norm = global_grad_norm(&grads)?;
    if !grad_norm.is_finite() {
        let culprit = grads
            .iter()
            .filter(|(_, g)| {
                g.sqr().and_then(|s| s.sum_all()).and_then(|s| s.to_scalar::<f32>()).is_ok_and(|v| !v.is_finite())
            })
            .map(|(n, _)| n.clone())
            .min()
            .unwrap_or_default();
        return Ok(StepOutcome::Skipped {
            what: format!("the gradient norm is {grad_norm} (first non-finite: `{culprit}`)"),
            loss: Some(loss),
            grad_norm: None,
        });
    }
    clip_grads(&mut grads, grad_norm, settings.grad_clip)?;
    updated.optimizer.step(trainable, &grads, settings.lr, settings.weight_decay)?;
    // Once an average exists it is kept current: a stage with ema_decay = 0 makes it follow the weights.
    if settings.ema_decay > 0.0 || !updated.ema.is_empty() {
        let decay = Ema::warmed_decay(settings.ema_decay, *updated.ema_updates);
        updated.ema.update(updated.params, decay)?;
        *updated.ema_updates += 1;
    }
    Ok(StepOutcome::Applied { loss, grad_norm })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_even_in_number_and_size_and_cover_the_batch() {
        let lens = |b: usize| shard_ranges(b, &Device::Cpu).iter().map(|r| r.len()).collect::<Vec<_>>();
        assert_eq!(lens(64), vec![16; 4]);
        assert_eq!(lens(32), vec![16; 2]);
        assert_eq!(lens(24), vec![12, 12]);
        assert_eq!(lens(16), vec![8, 8]);
        assert_eq!(lens(15), vec![15]);
        assert_eq!(lens(96), vec![16; 6]);
        assert_eq!(lens(256), vec![32; 8]);
        assert_eq!(lens(50), vec![25, 25]);
        assert_eq!(lens(100), vec![17, 17, 17, 17, 16, 16]);
        for b in 1..300 {
            let ranges = shard_ranges(b, &Device::Cpu);
            assert_eq!(ranges.first().map(|r| r.start), Some(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(b));
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        }
    }
}
