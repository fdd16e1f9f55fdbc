//! AdamW (decoupled weight decay, as PyTorch's `torch.optim.AdamW`) with state that can be saved,
//! restored, and carried across stages parameter by parameter.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

/// First and second moments of one parameter and how many updates it has had.
#[derive(Debug, Clone)]
pub struct Moments {
    /// Exponential average of gradients.
    pub exp_avg: Tensor,
    /// Exponential average of squared gradients.
    pub exp_avg_sq: Tensor,
    /// Updates applied to this parameter (for bias correction).
    pub steps: u64,
}

/// AdamW whose moments are keyed by parameter name.
#[derive(Debug, Clone)]
pub struct AdamW {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    moments: BTreeMap<String, Moments>,
}

impl Default for AdamW {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, moments: BTreeMap::new() }
    }
}

impl AdamW {
    /// Applies one update to each `(name, var)` whose gradient is in `grads`.
    /// Per parameter: θ ← θ(1 − lr·wd); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
    /// θ ← θ − lr · (m / (1−β₁ᵗ)) / (√(v / (1−β₂ᵗ)) + ε).
    pub fn step(
        &mut self,
        params: &[(String, Var)],
        grads: &HashMap<String, Tensor>,
        lr: f64,
        weight_decay: f64,
    ) -> Result<()> {
        for (name, var) in params {
            let Some(grad) = grads.get(name) else { continue };
            // Gradients carry the backward graph; moments built from them would keep every step's graph alive.
            let grad = grad.detach();
            let moments = match self.moments.get_mut(name) {
                Some(m) => m,
                None => {
                    let zeros = var.zeros_like()?;
                    self.moments.entry(name.clone()).or_insert(Moments {
                        exp_avg: zeros.clone(),
                        exp_avg_sq: zeros,
                        steps: 0,
                    })
                }
            };
            moments.steps += 1;
            let t = moments.steps as i32;
            let exp_avg = ((&moments.exp_avg * self.beta1)? + (&grad * (1.0 - self.beta1))?)?;
            let exp_avg_sq = ((&moments.exp_avg_sq * self.beta2)? + (grad.sqr()? * (1.0 - self.beta2))?)?;
            let bias1 = 1.0 - self.beta1.powi(t);
            let bias2 = 1.0 - self.beta2.powi(t);
            let denom = ((&exp_avg_sq / bias2)?.sqrt()? + self.eps)?;
            let update = ((&exp_avg / bias1)? / denom)?;
            let theta = var.as_tensor();
            let decayed = if weight_decay != 0.0 { (theta * (1.0 - lr * weight_decay))? } else { theta.clone() };
            var.set(&(decayed - (update * lr)?)?)?;
            moments.exp_avg = exp_avg;
            moments.exp_avg_sq = exp_avg_sq;
        }
        Ok(())
    }

    /// Keeps the moments of `names` only: at a stage change, parameters that keep training keep their
    /// moments; the others are dropped, so a parameter that starts training starts fresh.
    pub fn retain(&mut self, names: &std::collections::HashSet<String>) {
        self.moments.retain(|name, _| names.contains(name));
    }

    /// Moments by parameter name.
    pub fn moments(&self) -> &BTreeMap<String, Moments> {
        &self.moments
    }

    /// The state as named tensors: `exp_avg.<param>`, `exp_avg_sq.<param>`, `steps.<param>` (i64 `[1]`).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (name, m) in &self.moments {
            out.insert(format!("exp_avg.{name}"), m.exp_avg.clone());
            out.insert(format!("exp_avg_sq.{name}"), m.exp_avg_sq.clone());
            let device = m.exp_avg.device();
            out.insert(format!("steps.{name}"), Tensor::new(&[m.steps as i64], device)?);
        }
        Ok(out)
    }

    /// Restores the state written by [`state_tensors`](Self::state_tensors), checking that each moment
    /// belongs to a known parameter of the same shape.
    pub fn load_state_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        params: &[(String, Var)],
        device: &Device,
    ) -> Result<()> {
        let shapes: HashMap<&str, &Var> = params.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let mut moments = BTreeMap::new();
        for (key, tensor) in tensors {
            let Some(name) = key.strip_prefix("steps.") else { continue };
            let Some(var) = shapes.get(name) else {
                bail!("optimizer state has moments for `{name}`, which the model does not have");
            };
            let steps_vec = tensor.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
            let steps = steps_vec.first().copied().unwrap_or(0).max(0) as u64;
            let get = |prefix: &str| -> Result<Tensor> {
                let key = format!("{prefix}.{name}");
                let t = tensors.get(&key).with_context(|| format!("optimizer state lacks `{key}`"))?;
                if t.dims() != var.dims() {
                    bail!("optimizer state `{key}` has shape {:?}, the parameter has {:?}", t.dims(), var.dims());
                }
                Ok(t.to_device(device)?.to_dtype(var.dtype())?)
            };
            moments
                .insert(name.to_string(), Moments { exp_avg: get("exp_avg")?, exp_avg_sq: get("exp_avg_sq")?, steps });
        }
        self.moments = moments;
        Ok(())
    }
}

/// Global L2 norm of a set of gradients, accumulated in f64 over per-tensor sums of squares (one reduction
/// per tensor on its device, one copy to the host for all of them).
pub fn global_grad_norm(grads: &HashMap<String, Tensor>) -> Result<f64> {
    let (_, sums) = grad_square_sums(grads)?;
    Ok(norm_from_square_sums(&host_scalars(&sums)?))
}

/// Each gradient's sum of squares, an f32 scalar left on the gradient's device, in name order (the names
/// returned beside them).
pub fn grad_square_sums(grads: &HashMap<String, Tensor>) -> Result<(Vec<&String>, Vec<Tensor>)> {
    let mut names: Vec<&String> = grads.keys().collect();
    names.sort();
    let sums = names
        .iter()
        .map(|name| grads[*name].sqr()?.sum_all()?.to_dtype(DType::F32))
        .collect::<candle_core::Result<_>>()?;
    Ok((names, sums))
}

/// The global norm from per-tensor sums of squares (summed in f64, in the order given).
pub fn norm_from_square_sums(sums: &[f32]) -> f64 {
    sums.iter().fold(0.0f64, |acc, s| acc + f64::from(*s)).sqrt()
}

/// Scalars (any float dtype, all on one device) brought to the host as f32 in one copy.
pub fn host_scalars(scalars: &[Tensor]) -> Result<Vec<f32>> {
    if scalars.is_empty() {
        return Ok(Vec::new());
    }
    let flat =
        scalars.iter().map(|s| s.flatten_all()?.to_dtype(DType::F32)).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&flat, 0)?.to_vec1::<f32>()?)
}

/// Scales gradients so that their global norm is at most `max_norm` (PyTorch's `clip_grad_norm_`:
/// factor `max_norm / (norm + 1e-6)`, applied only when below 1). Returns the factor used.
pub fn clip_grads(grads: &mut HashMap<String, Tensor>, norm: f64, max_norm: f64) -> Result<f64> {
    if max_norm <= 0.0 {
        return Ok(1.0);
    }
    let factor = max_norm / (norm + 1e-6);
    if factor >= 1.0 {
        return Ok(1.0);
    }
    for g in grads.values_mut() {
        *g = (&*g * factor)?;
    }
    Ok(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(values: &[f32]) -> Var {
        Var::from_tensor(&Tensor::new(values, &Device::Cpu).unwrap()).unwrap()
    }

    fn grads(items: &[(&str, &[f32])]) -> HashMap<String, Tensor> {
        items.iter().map(|(n, v)| (n.to_string(), Tensor::new(*v, &Device::Cpu).unwrap())).collect()
    }

    #[test]
    fn global_norm_spans_every_tensor() {
        let g = grads(&[("a", &[3.0]), ("b", &[0.0, 4.0])]);
        assert!((global_grad_norm(&g).unwrap() - 5.0).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_to_the_threshold_and_leaves_small_gradients_alone() {
        let mut g = grads(&[("a", &[3.0, 4.0])]);
        let factor = clip_grads(&mut g, 5.0, 1.0).unwrap();
        assert!((factor - 1.0 / (5.0 + 1e-6)).abs() < 1e-12);
        let clipped = g["a"].to_vec1::<f32>().unwrap();
        assert!((clipped[0] - 0.6).abs() < 1e-6 && (clipped[1] - 0.8).abs() < 1e-6, "{clipped:?}");
        assert!((global_grad_norm(&g).unwrap() - 1.0).abs() < 1e-5);

        let mut small = grads(&[("a", &[0.3, 0.4])]);
        assert_eq!(clip_grads(&mut small, 0.5, 1.0).unwrap(), 1.0);
        assert_eq!(small["a"].to_vec1::<f32>().unwrap(), vec![0.3, 0.4]);
        assert_eq!(clip_grads(&mut small, 0.5, 0.0).unwrap(), 1.0, "0 turns clipping off");
    }

    #[test]
    fn adamw_matches_the_hand_computed_first_step() {
        // m̂ = 0.5, v̂ = 0.25 → update 1; θ = 1·(1 − 0.1·0.01) − 0.1·1 = 0.899.
        let params = vec![("w".to_string(), var(&[1.0]))];
        let mut opt = AdamW::default();
        opt.step(&params, &grads(&[("w", &[0.5])]), 0.1, 0.01).unwrap();
        let w = params[0].1.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((w - 0.899).abs() < 1e-6, "{w}");
        assert_eq!(opt.moments()["w"].steps, 1);
    }

    #[test]
    fn moments_hold_no_backward_graph() {
        // A gradient computed from a variable carries its graph; the moments must not keep it alive.
        let w = var(&[1.0, -2.0]);
        let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap();
        let store = loss.backward().unwrap();
        let graph_grad = (store.get(w.as_tensor()).unwrap() * 1.0).unwrap();
        let params = vec![("w".to_string(), w.clone())];
        let grads: HashMap<String, Tensor> = [("w".to_string(), graph_grad)].into_iter().collect();
        let mut opt = AdamW::default();
        opt.step(&params, &grads, 0.1, 0.0).unwrap();
        let m = &opt.moments()["w"];
        assert!(!m.exp_avg.track_op() && !m.exp_avg_sq.track_op());
    }

    #[test]
    fn state_round_trips_and_retain_drops_moments() {
        let params = vec![("a".to_string(), var(&[1.0, 2.0])), ("b".to_string(), var(&[3.0]))];
        let mut opt = AdamW::default();
        let g = grads(&[("a", &[0.1, -0.2]), ("b", &[0.3])]);
        opt.step(&params, &g, 0.01, 0.0).unwrap();
        opt.step(&params, &g, 0.01, 0.0).unwrap();
        let saved = opt.state_tensors().unwrap();
        let mut restored = AdamW::default();
        restored.load_state_tensors(&saved, &params, &Device::Cpu).unwrap();
        for name in ["a", "b"] {
            let (x, y) = (&opt.moments()[name], &restored.moments()[name]);
            assert_eq!(x.steps, 2);
            assert_eq!(x.steps, y.steps);
            assert_eq!(x.exp_avg.to_vec1::<f32>().unwrap(), y.exp_avg.to_vec1::<f32>().unwrap());
            assert_eq!(x.exp_avg_sq.to_vec1::<f32>().unwrap(), y.exp_avg_sq.to_vec1::<f32>().unwrap());
        }
        restored.retain(&["b".to_string()].into_iter().collect());
        assert!(restored.moments().contains_key("b") && !restored.moments().contains_key("a"));
        let unknown = vec![("c".to_string(), var(&[0.0]))];
        assert!(AdamW::default().load_state_tensors(&saved, &unknown, &Device::Cpu).is_err());
    }
}
