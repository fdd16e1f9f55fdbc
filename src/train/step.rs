//! One optimizer step, the part that does not depend on where batches come from: each micro-batch's loss
//! checked and back-propagated into summed gradients, then the global gradient norm, the non-finite guard,
//! clipping, AdamW and the EMA. The trainer and `wick bench` both run exactly this, so the bench times the
//! work a training step does.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Tensor};

use super::checkpointing::NamedVars;
use super::ema::Ema;
use super::optimizer::{clip_grads, global_grad_norm, AdamW};

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

/// Gradients summed over a step's micro-batches, with the first non-finite loss met.
#[derive(Default)]
pub struct GradAccumulator {
    grads: HashMap<String, Tensor>,
    loss_sum: f64,
    micro_batches: usize,
    bad: Option<String>,
}

impl GradAccumulator {
    /// Whether a micro-batch's loss was not finite (the step will be skipped; later micro-batches need no
    /// backward pass).
    pub fn is_bad(&self) -> bool {
        self.bad.is_some()
    }

    /// Checks micro-batch `micro`'s loss and, when finite, adds its gradients (of `loss / grad_accum`) for the
    /// `trainable` parameters.
    pub fn add(&mut self, micro: usize, loss: Tensor, grad_accum: usize, trainable: &NamedVars) -> Result<()> {
        if self.is_bad() {
            return Ok(());
        }
        let loss_value = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        if !loss_value.is_finite() {
            self.bad = Some(format!("the loss of micro-batch {micro} is {loss_value}"));
            return Ok(());
        }
        self.loss_sum += loss_value;
        self.micro_batches += 1;
        let scaled = if grad_accum > 1 { (loss / grad_accum as f64)? } else { loss };
        let store = scaled.backward()?;
        for (name, var) in trainable {
            if let Some(g) = store.get(var.as_tensor()) {
                let sum = match self.grads.remove(name) {
                    Some(acc) => (acc + g)?,
                    None => g.clone(),
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
