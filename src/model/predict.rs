//! `wick predict`: one denoiser evaluation on inputs read from a safetensors file.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};

use super::init::{load_model, spec_from_weights, weights_file};

/// `wick predict`: reads `x`, `t`, `y`, `boxes`, `box_classes` from the `input` safetensors (y and box_classes
/// integer, i64 from PyTorch; x, t, boxes float; inputs are taken as given, no box normalisation), runs the
/// denoiser of `checkpoint` (a checkpoint dir holding model.safetensors, or the file itself) on `device` and
/// writes `v` to the `output` safetensors (f32).
pub fn predict_file(checkpoint: &Path, input: &Path, output: &Path, device: &Device) -> anyhow::Result<()> {
    let device = device.clone();
    let weights = weights_file(checkpoint);
    let spec = spec_from_weights(&weights)?;
    let (_varmap, model) = load_model(spec, &weights, &device)?;
    let mut inputs = candle_core::safetensors::load(input, &device)
        .with_context(|| format!("reading inputs {}", input.display()))?;
    let mut take =
        |name: &str| inputs.remove(name).with_context(|| format!("inputs {} have no tensor `{name}`", input.display()));
    let float = |name: &str, t: Tensor| -> anyhow::Result<Tensor> {
        if !t.dtype().is_float() {
            bail!("input `{name}` has dtype {:?}, expected a float", t.dtype())
        }
        Ok(t.to_dtype(DType::F32)?)
    };
    let x = float("x", take("x")?)?;
    let t = float("t", take("t")?)?;
    let boxes = float("boxes", take("boxes")?)?;
    let y = class_indices("y", take("y")?, spec.null_class())?;
    let box_classes = class_indices("box_classes", take("box_classes")?, spec.null_class())?;
    let v = model.forward(&x, &t, &y, &boxes, &box_classes).context("running the denoiser")?;
    let out = HashMap::from([("v".to_string(), v)]);
    candle_core::safetensors::save(&out, output).with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}

/// Integer class indices (any integer dtype) to u32, each checked to lie in `0..=null_class`.
fn class_indices(name: &str, t: Tensor, null_class: u32) -> anyhow::Result<Tensor> {
    if t.dtype().is_float() {
        bail!("input `{name}` has dtype {:?}, expected integers", t.dtype())
    }
    let values = t.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()?;
    if let Some(bad) = values.iter().find(|&&v| v < 0 || v > i64::from(null_class)) {
        bail!("input `{name}` holds class {bad}, outside 0..={null_class}")
    }
    let values: Vec<u32> = values.into_iter().map(|v| v as u32).collect();
    Ok(Tensor::from_vec(values, t.dims(), t.device())?)
}
