//! The judge: a small CNN trained on real images of a task to classify the main object and regress its box.
//! Its penultimate features play the role Inception features play in standard FID ("FID (judge)").
//!
//! ```text
//! [B,3,32,32] ─ conv3×3 16 ─ conv3×3/2 32 ─ conv3×3 32 ─ conv3×3/2 64 ─ conv3×3/2 64 ─ flatten [B,1024]
//!   ─ linear 128 + ReLU = features [B,128] ─┬─ linear → class logits [B,4]
//!                                            └─ linear → sigmoid → main object's box [B,4] (x0,y0,x1,y1)
//! ```
//! Every convolution is followed by ReLU. Stride-2 convolutions downsample (candle's pooling with
//! kernel ≠ stride has no backward).

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Conv2d, Conv2dConfig, Linear, Module, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Size of the judge's feature vector (the FID feature dimension).
pub const JUDGE_FEATURES: usize = 128;
/// Classes the judge tells apart.
pub const JUDGE_CLASSES: usize = 4;

/// (name, in channels, out channels, stride) of each convolution.
const CONVS: [(&str, usize, usize, usize); 5] =
    [("conv1", 3, 16, 1), ("conv2", 16, 32, 2), ("conv3", 32, 32, 1), ("conv4", 32, 64, 2), ("conv5", 64, 64, 2)];
/// Values in the last feature map (64 channels × 4 × 4), flattened so position survives for the box head.
const FLAT: usize = 64 * 4 * 4;

/// What the judge says about a batch of images.
pub struct JudgeOutput {
    /// Class logits [B, 4].
    pub logits: Tensor,
    /// Predicted main-object box [B, 4], normalised.
    pub boxes: Tensor,
    /// Penultimate features [B, 128].
    pub features: Tensor,
}

/// The judge network.
pub struct Judge {
    convs: Vec<Conv2d>,
    features: Linear,
    class_head: Linear,
    box_head: Linear,
}

/// Every parameter's name, shape and fan-in.
fn param_table() -> Vec<(String, Vec<usize>, usize)> {
    let mut table = Vec::new();
    for (name, cin, cout, _) in CONVS {
        table.push((format!("{name}.weight"), vec![cout, cin, 3, 3], cin * 9));
        table.push((format!("{name}.bias"), vec![cout], cin * 9));
    }
    for (name, cin, cout) in [
        ("features", FLAT, JUDGE_FEATURES),
        ("class_head", JUDGE_FEATURES, JUDGE_CLASSES),
        ("box_head", JUDGE_FEATURES, 4),
    ] {
        table.push((format!("{name}.weight"), vec![cout, cin], cin));
        table.push((format!("{name}.bias"), vec![cout], cin));
    }
    table.sort_by(|a, b| a.0.cmp(&b.0));
    table
}

impl Judge {
    /// Builds the layers on `vb` (names `conv1.weight` … `box_head.bias`).
    pub fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let convs = CONVS
            .iter()
            .map(|(name, cin, cout, stride)| {
                let config = Conv2dConfig { padding: 1, stride: *stride, ..Default::default() };
                candle_nn::conv2d(*cin, *cout, 3, config, vb.pp(*name))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            convs,
            features: candle_nn::linear(FLAT, JUDGE_FEATURES, vb.pp("features"))?,
            class_head: candle_nn::linear(JUDGE_FEATURES, JUDGE_CLASSES, vb.pp("class_head"))?,
            box_head: candle_nn::linear(JUDGE_FEATURES, 4, vb.pp("box_head"))?,
        })
    }

    /// Judges images [B, 3, 32, 32] in [-1, 1].
    pub fn forward(&self, images: &Tensor) -> candle_core::Result<JudgeOutput> {
        let mut h = images.clone();
        for conv in &self.convs {
            h = conv.forward(&h)?.relu()?;
        }
        let features = self.features.forward(&h.flatten_from(1)?)?.relu()?;
        let logits = self.class_head.forward(&features)?;
        let boxes = candle_nn::ops::sigmoid(&self.box_head.forward(&features)?)?;
        Ok(JudgeOutput { logits, boxes, features })
    }
}

/// A fresh judge: He-uniform weights (U(±√(6/fan_in))) before ReLUs, U(±1/√fan_in) for the heads, zero
/// biases, drawn from `seed` in sorted-name order.
pub fn build_judge(device: &Device, seed: u64) -> Result<(VarMap, Judge)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?;
        for (name, shape, fan_in) in param_table() {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name.ends_with(".bias") {
                vec![0.0; n]
            } else {
                // He-uniform for layers followed by ReLU keeps activations at scale through the stack;
                // the heads get the smaller 1/√fan_in.
                let gain = if name.starts_with("conv") || name.starts_with("features") { 6.0f32 } else { 1.0 };
                let bound = (gain / fan_in as f32).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            let var = Var::from_tensor(&Tensor::from_vec(values, shape, device)?)?;
            data.insert(name, var);
        }
    }
    let judge = Judge::new(VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    Ok((varmap, judge))
}

/// Loads judge weights from a file (strict: every parameter present with its shape, nothing else).
pub fn load_judge(path: &Path, device: &Device) -> Result<Judge> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read the judge {}", path.display()))?;
    load_judge_bytes(&bytes, device).with_context(|| format!("judge {}", path.display()))
}

/// Loads judge weights from safetensors bytes (strict, as [`load_judge`]).
pub fn load_judge_bytes(bytes: &[u8], device: &Device) -> Result<Judge> {
    let tensors = candle_core::safetensors::load_buffer(bytes, device).context("not valid safetensors")?;
    let table = param_table();
    for (name, shape, _) in &table {
        let t = tensors.get(name).with_context(|| format!("lacks `{name}` — not a judge"))?;
        anyhow::ensure!(t.dims() == shape.as_slice(), "`{name}` has shape {:?}, expected {shape:?}", t.dims());
    }
    if let Some(extra) = tensors.keys().find(|k| !table.iter().any(|(n, _, _)| n == *k)) {
        anyhow::bail!("has `{extra}`, which the judge does not have");
    }
    Ok(Judge::new(VarBuilder::from_tensors(tensors, DType::F32, device))?)
}
