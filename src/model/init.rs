//! Making a model: fresh deterministic initialisation ([`build_model`]), strict loading of saved weights
//! ([`load_model`]) and recognising a preset from a weights file ([`spec_from_weights`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use super::denoiser::Denoiser;
use super::spec::{param_table, ModelSpec, ParamInit};
use crate::config::ModelPreset;

/// File name of the model weights inside a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Builds a fresh VarMap + Denoiser on `device`, every parameter initialised as the reference does (Linear
/// weight and bias `~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, Embedding `~ N(0, 1)`, zeros for each block's `ada`,
/// `final_ada`, `final_linear` and every `adapter_gate`). Values are drawn from a `ChaCha8Rng` seeded with
/// `seed`, visiting parameters in sorted-name order (zero-initialised parameters draw nothing), and built with
/// `Tensor::from_vec`: fully deterministic, never candle's RNG.
pub fn build_model(spec: ModelSpec, device: &Device, seed: u64) -> anyhow::Result<(VarMap, Denoiser)> {
    spec.check().map_err(anyhow::Error::msg)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut tensors = Vec::new();
    for p in param_table(spec) {
        let n: usize = p.shape.iter().product();
        let values: Vec<f32> = match p.init {
            ParamInit::Uniform { fan_in } => {
                let bound = 1.0 / (fan_in as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            }
            ParamInit::Normal => (0..n).map(|_| StandardNormal.sample(&mut rng)).collect(),
            ParamInit::Zeros => vec![0.0; n],
        };
        let tensor = Tensor::from_vec(values, p.shape.as_slice(), device)
            .with_context(|| format!("initialising parameter {}", p.name))?;
        tensors.push((p.name, tensor));
    }
    model_from_tensors(spec, tensors, device)
}

/// Wraps named f32 tensors (exactly the spec's parameter table) as vars of a new VarMap and builds the model.
fn model_from_tensors(
    spec: ModelSpec,
    tensors: Vec<(String, Tensor)>,
    device: &Device,
) -> anyhow::Result<(VarMap, Denoiser)> {
    let varmap = VarMap::new();
    let expected = tensors.len();
    {
        let mut data = varmap.data().lock().map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?;
        for (name, tensor) in tensors {
            let var = Var::from_tensor(&tensor).with_context(|| format!("making parameter {name} a var"))?;
            data.insert(name, var);
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let model = Denoiser::new(spec, vb).context("building the denoiser")?;
    let count = varmap.data().lock().map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?.len();
    if count != expected {
        bail!("internal: the denoiser created {} parameters beyond the parameter table", count - expected);
    }
    Ok((varmap, model))
}

/// Every variable of `varmap` with its name, sorted by name (`VarMap` iterates a HashMap: sort wherever
/// order matters — optimizer steps, checkpoints, initialisation).
pub fn sorted_vars(varmap: &VarMap) -> anyhow::Result<Vec<(String, Var)>> {
    let data = varmap.data().lock().map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?;
    let mut vars: Vec<(String, Var)> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// The weights file of `path`: `path/model.safetensors` when `path` is a directory, else `path` itself.
pub fn weights_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(WEIGHTS_FILE)
    } else {
        path.to_path_buf()
    }
}

/// Loads model.safetensors weights from a checkpoint dir or file into a fresh model of `spec` on `device`.
/// Strict: missing, extra or mis-shaped names are an error naming the tensor. Float tensors of another
/// dtype are converted to f32.
pub fn load_model(spec: ModelSpec, weights_path: &Path, device: &Device) -> anyhow::Result<(VarMap, Denoiser)> {
    spec.check().map_err(anyhow::Error::msg)?;
    let file = weights_file(weights_path);
    let mut loaded: HashMap<String, Tensor> =
        candle_core::safetensors::load(&file, device).with_context(|| format!("reading weights {}", file.display()))?;
    let table = param_table(spec);
    let mut problems = Vec::new();
    let mut tensors = Vec::with_capacity(table.len());
    for p in &table {
        match loaded.remove(&p.name) {
            None => problems.push(format!("missing tensor {} {:?}", p.name, p.shape)),
            Some(t) if t.dims() != p.shape.as_slice() => {
                problems.push(format!("tensor {} has shape {:?}, expected {:?}", p.name, t.dims(), p.shape))
            }
            Some(t) if !t.dtype().is_float() => {
                problems.push(format!("tensor {} has dtype {:?}, expected a float", p.name, t.dtype()))
            }
            Some(t) => {
                let t = t.to_dtype(DType::F32).with_context(|| format!("converting {} to f32", p.name))?;
                tensors.push((p.name.clone(), t));
            }
        }
    }
    let mut extra: Vec<_> = loaded.keys().cloned().collect();
    extra.sort();
    problems.extend(extra.into_iter().map(|name| format!("unexpected tensor {name}")));
    if !problems.is_empty() {
        bail!("weights {} do not fit model {:?}: {}", file.display(), spec, problems.join("; "));
    }
    model_from_tensors(spec, tensors, device)
}

/// Infers the spec from a weights file (or checkpoint dir): width and patch from `patch_embed.weight`, depth
/// from the `blocks.N` names, the adapter from `adapter` names, the classes from `class_embed.weight`; width
/// and depth must match a preset, and the image is 8 patches a side (as every preset's).
pub fn spec_from_weights(weights_path: &Path) -> anyhow::Result<ModelSpec> {
    let file = weights_file(weights_path);
    let bytes = std::fs::read(&file).with_context(|| format!("reading weights {}", file.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("parsing safetensors {}", file.display()))?;
    let shapes: BTreeMap<String, Vec<usize>> =
        st.tensors().into_iter().map(|(name, view)| (name, view.shape().to_vec())).collect();
    let patch_shape = shapes
        .get("patch_embed.weight")
        .with_context(|| format!("weights {} have no tensor patch_embed.weight", file.display()))?;
    let [width, patch_dim] = patch_shape[..] else {
        bail!("weights {}: patch_embed.weight has shape {patch_shape:?}, expected [width, 3·patch²]", file.display())
    };
    let class_rows = shapes
        .get("class_embed.weight")
        .and_then(|s| s.first().copied())
        .with_context(|| format!("weights {} have no tensor class_embed.weight", file.display()))?;
    let mut blocks: Vec<usize> =
        shapes.keys().filter_map(|name| name.strip_prefix("blocks.")?.split('.').next()?.parse().ok()).collect();
    blocks.sort_unstable();
    blocks.dedup();
    let depth = blocks.len();
    let adapter = shapes.keys().any(|name| name.contains("adapter"));
    let patch = (1..=64).find(|p| 3 * p * p == patch_dim).with_context(|| {
        format!("weights {}: patch_embed.weight has {patch_dim} inputs, not 3·patch² for any patch", file.display())
    })?;
    let preset = [ModelPreset::Tiny, ModelPreset::Small, ModelPreset::Base]
        .into_iter()
        .map(|preset| ModelSpec::from_preset(preset, adapter))
        .find(|s| s.width == width && s.depth == depth)
        .with_context(|| format!("weights {}: no preset has width {width} and depth {depth}", file.display()))?;
    anyhow::ensure!(class_rows >= 2, "weights {}: class_embed.weight has {class_rows} rows", file.display());
    Ok(ModelSpec { patch, image_size: patch * preset.grid(), classes: class_rows - 1, ..preset })
}

/// Testing aid: overwrites every zero-initialised parameter of `spec` in `varmap` (each block's `ada`,
/// `final_ada`, `final_linear`, the adapter gates) with seeded draws, so that every path of the network is
/// live: Linear weights and biases `~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, gates `~ U(0.5, 1)`. Used by parity
/// and gradient checks; training never calls it.
pub fn randomize_zero_init(spec: ModelSpec, varmap: &VarMap, seed: u64) -> anyhow::Result<()> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = varmap.data().lock().map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?;
    for p in param_table(spec).into_iter().filter(|p| p.init == ParamInit::Zeros) {
        let var = data.get(&p.name).with_context(|| format!("VarMap has no parameter {}", p.name))?;
        let n: usize = p.shape.iter().product();
        let values: Vec<f32> = if p.name.ends_with("adapter_gate") {
            (0..n).map(|_| rng.random_range(0.5f32..1.0)).collect()
        } else {
            let fan_in = if p.shape.len() == 2 { p.shape[1] } else { spec.width };
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        let value = Tensor::from_vec(values, p.shape.as_slice(), var.device())?;
        var.set(&value).with_context(|| format!("setting {}", p.name))?;
    }
    Ok(())
}
