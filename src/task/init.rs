//! Seeded initial weights for any model built on a `VarBuilder`.
//!
//! candle's CPU random generator cannot be seeded, so `candle_nn::linear` & co. under a plain `VarMap`
//! give different weights at every start. [`seeded_varmap`] builds the model under a backend that draws each
//! variable from its own ChaCha8 stream, keyed by the run seed and the variable's name, honouring the `Init`
//! hint the layer asks for: the same seed gives the same weights whatever order the layers are built in.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use sha2::{Digest, Sha256};

/// The seed of a variable's stream: the first 8 bytes of sha256(seed, name).
pub fn variable_seed(seed: u64, name: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}

/// Values of `count` elements drawn for `init` from `rng` (f32).
fn draw(init: Init, shape: &Shape, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let count = shape.elem_count();
    let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| {
        (0..count)
            .map(|_| {
                let n: f64 = StandardNormal.sample(rng);
                (mean + std * n) as f32
            })
            .collect::<Vec<f32>>()
    };
    let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| {
        if lo >= up {
            return vec![lo as f32; count];
        }
        (0..count).map(|_| rng.random_range(lo..up) as f32).collect()
    };
    match init {
        Init::Const(c) => vec![c as f32; count],
        Init::Randn { mean, stdev } => normal(rng, mean, stdev),
        Init::Uniform { lo, up } => uniform(rng, lo, up),
        Init::Kaiming { dist, fan, non_linearity } => {
            let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(rng, -bound, bound)
                }
                NormalOrUniform::Normal => normal(rng, 0.0, std),
            }
        }
    }
}

/// A `VarBuilder` backend that creates each variable once, from its own seeded stream.
struct SeededBackend {
    seed: u64,
    vars: Mutex<HashMap<String, Var>>,
}

impl SimpleBackend for SeededBackend {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let mut vars = self.vars.lock().map_err(|_| candle_core::Error::Msg("variable store poisoned".into()))?;
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                return Err(candle_core::Error::Msg(format!(
                    "variable `{name}` asked for with shape {shape:?}, already created with {:?}",
                    var.shape()
                )));
            }
            return Ok(var.as_tensor().clone());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(variable_seed(self.seed, name));
        let values = draw(init, &shape, &mut rng);
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?)?;
        let tensor = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _device: &Device) -> candle_core::Result<Tensor> {
        let vars = self.vars.lock().map_err(|_| candle_core::Error::Msg("variable store poisoned".into()))?;
        vars.get(name)
            .map(|v| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::Msg(format!("no variable `{name}` was created")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars.lock().is_ok_and(|vars| vars.contains_key(name))
    }
}

/// Builds a model with `build` under a seeded f32 VarBuilder and returns its variables: a pure function of
/// `seed` and the model's names, shapes and `Init` hints.
pub fn seeded_varmap(
    seed: u64,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> anyhow::Result<VarMap> {
    let backend = std::sync::Arc::new(SeededBackend { seed, vars: Mutex::new(HashMap::new()) });
    let shared = SharedBackend(backend.clone());
    let vb = VarBuilder::from_backend(Box::new(shared), DType::F32, device.clone());
    build(vb).map_err(|e| anyhow::anyhow!("building the model: {e}"))?;
    let varmap = VarMap::new();
    {
        let vars = backend.vars.lock().map_err(|_| anyhow::anyhow!("variable store poisoned"))?;
        let mut data = varmap.data().lock().map_err(|_| anyhow::anyhow!("variable map poisoned"))?;
        for (name, var) in vars.iter() {
            data.insert(name.clone(), var.clone());
        }
    }
    Ok(varmap)
}

/// Lets the VarBuilder own a handle while [`seeded_varmap`] keeps another to collect the variables.
struct SharedBackend(std::sync::Arc<SeededBackend>);

impl SimpleBackend for SharedBackend {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.0.get(shape, name, init, dtype, device)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        self.0.get_unchecked(name, dtype, device)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(vb: VarBuilder) -> candle_core::Result<()> {
        candle_nn::linear(4, 3, vb.pp("a"))?;
        candle_nn::embedding(5, 2, vb.pp("emb"))?;
        Ok(())
    }

    fn values(map: &VarMap, name: &str) -> Vec<f32> {
        map.data().lock().unwrap()[name].as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_weights_and_another_seed_others() {
        let a = seeded_varmap(1, &Device::Cpu, build).unwrap();
        let b = seeded_varmap(1, &Device::Cpu, build).unwrap();
        let c = seeded_varmap(2, &Device::Cpu, build).unwrap();
        for name in ["a.weight", "a.bias", "emb.weight"] {
            assert_eq!(values(&a, name), values(&b, name), "{name}");
            assert_ne!(values(&a, name), values(&c, name), "{name}");
        }
        // The bias of a 4-input linear layer is uniform in ±1/sqrt(4).
        assert!(values(&a, "a.bias").iter().all(|v| v.abs() <= 0.5));
        assert_eq!(a.all_vars().len(), 3);
    }
}
