//! Exponential moving average of the weights: `ema ← decay · ema + (1 − decay) · θ` after each step.

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

    /// Updates the average from `params`; a parameter seen for the first time starts at its value.
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
