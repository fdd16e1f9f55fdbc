//! Exponential moving average of the weights: `ema ← d · ema + (1 − d) · θ` after each step, with the
//! usual warm-up `d = min(decay, (1 + n) / (10 + n))` (n = updates so far), so early averages follow the
//! weights instead of lingering at the initialisation for thousands of steps.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use candle_core::{Tensor, Var};

/// The averaged weights, by parameter name.
#[derive(Debug, Clone, Default)]
pub struct Ema {
    shadow: BTreeMap<String, Tensor>,
}

impl Ema {
    /// Whether any average exists yet.
    pub fn is_empty(&self) -> bool {
        self.shadow.is_empty()
    }

    /// The decay used for update number `updates` (0-based) under a configured `decay`.
    pub fn warmed_decay(decay: f64, updates: u64) -> f64 {
        decay.min((1.0 + updates as f64) / (10.0 + updates as f64))
    }

    /// Updates the average from `params` with `decay` as given (see [`Ema::warmed_decay`]); a parameter seen
    /// for the first time starts at its value.
    pub fn update(&mut self, params: &[(String, Var)], decay: f64) -> Result<()> {
        for (name, var) in params {
            let value = var.as_tensor().detach();
            let next = match self.shadow.get(name) {
                Some(old) => ((old * decay)? + (value * (1.0 - decay))?)?,
                None => value.copy()?,
            };
            self.shadow.insert(name.clone(), next);
        }
        Ok(())
    }

    /// The averages as named tensors (for ema.safetensors).
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.shadow
    }

    /// Restores averages saved by [`tensors`](Self::tensors), checking names against the model.
    pub fn load(&mut self, tensors: HashMap<String, Tensor>, params: &[(String, Var)]) -> Result<()> {
        let mut shadow = BTreeMap::new();
        for (name, var) in params {
            if let Some(t) = tensors.get(name) {
                anyhow::ensure!(
                    t.dims() == var.dims(),
                    "EMA weight `{name}` has shape {:?}, the model has {:?}",
                    t.dims(),
                    var.dims()
                );
                shadow.insert(name.clone(), t.to_device(var.device())?.to_dtype(var.dtype())?);
            }
        }
        for name in tensors.keys() {
            params
                .iter()
                .find(|(n, _)| n == name)
                .with_context(|| format!("EMA holds `{name}`, which the model does not have"))?;
        }
        self.shadow = shadow;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_starts_fast_and_reaches_the_configured_decay() {
        assert!((Ema::warmed_decay(0.999, 0) - 0.1).abs() < 1e-12);
        assert!((Ema::warmed_decay(0.999, 90) - 0.91).abs() < 1e-12);
        assert_eq!(Ema::warmed_decay(0.999, 1_000_000), 0.999);
        assert_eq!(Ema::warmed_decay(0.0, 5), 0.0, "decay 0 follows the weights");
    }

    #[test]
    fn update_averages_and_starts_at_the_first_value() {
        let device = candle_core::Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[2.0f32], &device).unwrap()).unwrap();
        let params = vec![("w".to_string(), var.clone())];
        let mut ema = Ema::default();
        ema.update(&params, 0.9).unwrap();
        var.set(&Tensor::new(&[4.0f32], &device).unwrap()).unwrap();
        ema.update(&params, 0.5).unwrap();
        assert_eq!(ema.tensors()["w"].to_vec1::<f32>().unwrap(), vec![3.0]);
        assert!(!ema.tensors()["w"].track_op());
    }
}
