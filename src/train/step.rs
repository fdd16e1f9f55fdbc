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
use super::optimizer::{clip_grads, grad_square_sums, host_scalars, norm_from_square_sums, AdamW};
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

/// Gradients summed over a step's micro-batches, and each shard's loss, still on the device: the step reads
/// them back with the gradient norm, in one copy ([`apply_step`]).
#[derive(Default)]
pub struct GradAccumulator {
    grads: HashMap<String, Tensor>,
    losses: Vec<ShardLoss>,
    micro_batches: usize,
}

/// One shard's loss: an f32 scalar on the device, where it came from and its weight in its micro-batch.
struct ShardLoss {
    value: Tensor,
    micro: usize,
    /// "micro-batch 0 (shard 2 of 4)".
    label: String,
    weight: f64,
}

/// What one shard's forward and backward gave: its loss (detached) and the gradients of the trainable
/// parameters (in their order; `None` = not reached).
struct ShardResult {
    loss: Tensor,
    grads: Vec<Option<Tensor>>,
}

/// Computes one shard's loss and the gradients of `weight · scale · loss` (a non-finite loss is found with
/// the gradient norm, after the backward: no host copy here). The gradient store (which holds every
/// activation's gradient) is dropped here, keeping only the parameters'.
fn run_shard(shard: LossShard<'_>, scale: f64, trainable: &NamedVars) -> Result<ShardResult> {
    let factor = shard.weight * scale;
    let loss = shard.compute()?;
    let scaled = if factor != 1.0 { (&loss * factor)? } else { loss.clone() };
    let store = scaled.backward()?;
    let grads = trainable.iter().map(|(_, var)| store.get(var.as_tensor()).cloned()).collect();
    Ok(ShardResult { loss: loss.detach().to_dtype(DType::F32)?, grads })
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
        let values = host_scalars(&self.losses.iter().map(|l| l.value.clone()).collect::<Vec<_>>()).unwrap();
        (self.loss_sum(&values).unwrap(), self.grads)
    }

    /// The summed loss from the shards' host `values` (in f64: shard by shard within a micro-batch, then
    /// micro-batch by micro-batch), or what was not finite, in words.
    fn loss_sum(&self, values: &[f32]) -> std::result::Result<f64, String> {
        let mut sum = 0.0;
        let mut micro = (usize::MAX, 0.0f64);
        for (loss, value) in self.losses.iter().zip(values) {
            if !value.is_finite() {
                return Err(format!("the loss of {} is {value}", loss.label));
            }
            if loss.micro != micro.0 {
                sum += micro.1;
                micro = (loss.micro, 0.0);
            }
            micro.1 += f64::from(*value) * loss.weight;
        }
        Ok(sum + micro.1)
    }

    /// Computes micro-batch `micro`'s loss `shards` and adds their gradients (of `loss / grad_accum`) for the
    /// `trainable` parameters. Several shards run in parallel on the current
    /// rayon pool, each on one thread (its kernels held to their share of the pool); their gradients are
    /// added in shard order.
    pub fn add(
        &mut self,
        micro: usize,
        shards: Vec<LossShard<'_>>,
        grad_accum: usize,
        trainable: &NamedVars,
    ) -> Result<()> {
        let scale = 1.0 / grad_accum.max(1) as f64;
        let count = shards.len();
        let weights: Vec<f64> = shards.iter().map(|shard| shard.weight).collect();
        let results: Vec<Result<ShardResult>> = if count <= 1 {
            shards.into_iter().map(|shard| run_shard(shard, scale, trainable)).collect()
        } else {
            let threads_each = (rayon::current_num_threads() / count).max(1);
            shards
                .into_par_iter()
                .map(|shard| with_kernel_threads(threads_each, || run_shard(shard, scale, trainable)))
                .collect()
        };
        let mut shard_grads = Vec::with_capacity(count);
        for (index, result) in results.into_iter().enumerate() {
            let ShardResult { loss, grads } = result?;
            let shard = if count > 1 { format!(" (shard {} of {count})", index + 1) } else { String::new() };
            let (label, weight) = (format!("micro-batch {micro}{shard}"), weights[index]);
            self.losses.push(ShardLoss { value: loss, micro, label, weight });
            shard_grads.push(grads);
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
    // One copy to the host per step: every shard's loss and every gradient's sum of squares.
    let (names, square_sums) = grad_square_sums(&accumulated.grads)?;
    let names: Vec<String> = names.into_iter().cloned().collect();
    let mut scalars: Vec<Tensor> = accumulated.losses.iter().map(|l| l.value.clone()).collect();
    scalars.extend(square_sums);
    let host = host_scalars(&scalars)?;
    let (loss_values, square_sums) = host.split_at(accumulated.losses.len().min(host.len()));
    let loss = match accumulated.loss_sum(loss_values) {
        Ok(sum) => sum / accumulated.micro_batches.max(1) as f64,
        Err(what) => return Ok(StepOutcome::Skipped { what, loss: None, grad_norm: None }),
    };
    let grad_norm = norm_from_square_sums(square_sums);
    if !grad_norm.is_finite() {
        let culprit = names.iter().zip(square_sums).find(|(_, s)| !s.is_finite()).map(|(n, _)| n.as_str());
        return Ok(StepOutcome::Skipped {
            what: format!("the gradient norm is {grad_norm} (first non-finite: `{}`)", culprit.unwrap_or_default()),
            loss: Some(loss),
            grad_norm: None,
        });
    }
    let mut grads = accumulated.grads;
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
    use candle_core::Var;

    use super::*;

    /// One step of `loss = Σ w · c` over micro-batches of loss shards (`c` per shard; `None` = a NaN
    /// loss), with the update applied to `w`.
    fn step_of(micro_batches: &[Vec<Option<f32>>]) -> (StepOutcome, Vec<f32>) {
        let w = Var::from_vec(vec![1f32, -2.0], 2, &Device::Cpu).unwrap();
        let trainable: NamedVars = vec![("w".into(), w.clone())];
        let mut accumulated = GradAccumulator::default();
        for (micro, shards) in micro_batches.iter().enumerate() {
            let shards = shards
                .iter()
                .map(|c| {
                    let loss = (w.as_tensor() * f64::from(c.unwrap_or(f32::NAN))).unwrap().sum_all().unwrap();
                    LossShard::new(0.5, move || Ok(loss))
                })
                .collect();
            accumulated.add(micro, shards, micro_batches.len(), &trainable).unwrap();
        }
        let (mut optimizer, mut ema, mut ema_updates) = (AdamW::default(), Ema::default(), 0);
        let settings = UpdateSettings { lr: 0.1, weight_decay: 0.0, grad_clip: 0.0, ema_decay: 0.0 };
        let updated =
            Updated { optimizer: &mut optimizer, ema: &mut ema, ema_updates: &mut ema_updates, params: &trainable };
        let outcome = apply_step(accumulated, &trainable, settings, updated).unwrap();
        (outcome, w.as_tensor().to_vec1::<f32>().unwrap())
    }

    #[test]
    fn a_step_gives_the_mean_loss_and_norm_and_names_the_first_non_finite_shard_leaving_the_weights() {
        // Shards weigh 0.5: micro-batch losses (1 + 3)/2 · (1 − 2) = −2 and (5 + 7)/2 · (−1) = −6; mean −4.
        // d/dw of the mean loss = ((1+3)/2 + (5+7)/2) / 2 = 4 per element: norm 4·√2.
        let (outcome, weights) = step_of(&[vec![Some(1.0), Some(3.0)], vec![Some(5.0), Some(7.0)]]);
        let StepOutcome::Applied { loss, grad_norm } = outcome else { panic!("{outcome:?}") };
        assert!((loss + 4.0).abs() < 1e-9, "{loss}");
        assert!((grad_norm - 4.0 * 2f64.sqrt()).abs() < 1e-5, "{grad_norm}");
        assert_ne!(weights, vec![1.0, -2.0], "applied");

        let (outcome, weights) = step_of(&[vec![Some(1.0), Some(3.0)], vec![Some(5.0), None]]);
        let StepOutcome::Skipped { what, loss: None, grad_norm: None } = outcome else { panic!("{outcome:?}") };
        assert_eq!(what, "the loss of micro-batch 1 (shard 2 of 2) is NaN");
        assert_eq!(weights, vec![1.0, -2.0], "a skipped step leaves the weights as they were");
    }

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
