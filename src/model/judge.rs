//! The judge: a small CNN trained on real images of a task to classify the main object and regress its box.
//! Its penultimate features play the role Inception features play in standard FID ("FID (judge)").
//!
//! ```text
//! [B,3,64,64] ─ 2×2 average ─┐ (64-pixel images are judged at 32)
//! [B,3,32,32] ───────────────┴─ conv3×3 16 ─ conv3×3/2 32 ─ conv3×3 32 ─ conv3×3/2 64 ─ conv3×3/2 64 ─ flatten [B,1024]
//!   ─ linear 128 + ReLU = features [B,128] ─┬─ linear → class logits [B,classes] (4 for shapes)
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
/// Classes the built-in judge (of the shapes task) tells apart.
pub const JUDGE_CLASSES: usize = 4;
/// Image side the judge's convolutions see; larger inputs are average-pooled down to it.
pub const JUDGE_SIDE: usize = 32;

/// (name, in channels, out channels, stride) of each convolution.
const CONVS: [(&str, usize, usize, usize); 5] =
    [("conv1", 3, 16, 1), ("conv2", 16, 32, 2), ("conv3", 32, 32, 1), ("conv4", 32, 64, 2), ("conv5", 64, 64, 2)];
/// Values in the last feature map (64 channels × 4 × 4), flattened so position survives for the box head.
const FLAT: usize = 64 * 4 * 4;

/// What the judge says about a batch of images.
pub struct JudgeOutput {
    /// Class logits [B, classes].
    pub logits: Tensor,
    /// Predicted main-object box [B, 4], normalised.
    pub boxes: Tensor,
    /// Penultimate features [B, 128].
    pub features: Tensor,
}

/// The judge network.
pub struct Judge {
    classes: usize,
    convs: Vec<Conv2d>,
    features: Linear,
    class_head: Linear,
    box_head: Linear,
}

/// Every parameter's name, shape and fan-in, for a judge of `classes` classes.
fn param_table(classes: usize) -> Vec<(String, Vec<usize>, usize)> {
    let mut table = Vec::new();
    for (name, cin, cout, _) in CONVS {
        table.push((format!("{name}.weight"), vec![cout, cin, 3, 3], cin * 9));
        table.push((format!("{name}.bias"), vec![cout], cin * 9));
    }
    for (name, cin, cout) in
        [("features", FLAT, JUDGE_FEATURES), ("class_head", JUDGE_FEATURES, classes), ("box_head", JUDGE_FEATURES, 4)]
    {
        table.push((format!("{name}.weight"), vec![cout, cin], cin));
        table.push((format!("{name}.bias"), vec![cout], cin));
    }
    table.sort_by(|a, b| a.0.cmp(&b.0));
    table
}

impl Judge {
    /// Builds the layers of a judge of `classes` classes on `vb` (names `conv1.weight` … `box_head.bias`).
    pub fn new(vb: VarBuilder, classes: usize) -> candle_core::Result<Self> {
        let convs = CONVS
            .iter()
            .map(|(name, cin, cout, stride)| {
                let config = Conv2dConfig { padding: 1, stride: *stride, ..Default::default() };
                candle_nn::conv2d(*cin, *cout, 3, config, vb.pp(*name))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            classes,
            convs,
            features: candle_nn::linear(FLAT, JUDGE_FEATURES, vb.pp("features"))?,
            class_head: candle_nn::linear(JUDGE_FEATURES, classes, vb.pp("class_head"))?,
            box_head: candle_nn::linear(JUDGE_FEATURES, 4, vb.pp("box_head"))?,
        })
    }

    /// Classes this judge tells apart.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Judges images [B, 3, S, S] in [-1, 1], S a multiple of 32 (larger images are average-pooled to 32).
    pub fn forward(&self, images: &Tensor) -> candle_core::Result<JudgeOutput> {
        let side = images.dim(3)?;
        let mut h = if side > JUDGE_SIDE && side % JUDGE_SIDE == 0 {
            let k = side / JUDGE_SIDE;
            images.avg_pool2d(k)?
        } else {
            images.clone()
        };
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
pub fn build_judge(device: &Device, seed: u64, classes: usize) -> Result<(VarMap, Judge)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?;
        for (name, shape, fan_in) in param_table(classes) {
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
    let judge = Judge::new(VarBuilder::from_varmap(&varmap, DType::F32, device), classes)?;
    Ok((varmap, judge))
}

/// Loads judge weights from a file (strict: every parameter present with its shape, nothing else).
pub fn load_judge(path: &Path, device: &Device) -> Result<Judge> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read the judge {}", path.display()))?;
    load_judge_bytes(&bytes, device).with_context(|| format!("judge {}", path.display()))
}

/// Loads judge weights from safetensors bytes (strict, as [`load_judge`]); the class count comes from the
/// class head's shape.
pub fn load_judge_bytes(bytes: &[u8], device: &Device) -> Result<Judge> {
    let tensors = candle_core::safetensors::load_buffer(bytes, device).context("not valid safetensors")?;
    let classes = tensors
        .get("class_head.bias")
        .context("lacks `class_head.bias` — not a judge")?
        .dims()
        .first()
        .copied()
        .unwrap_or(0);
    anyhow::ensure!(classes > 0, "`class_head.bias` is empty");
    let table = param_table(classes);
    for (name, shape, _) in &table {
        let t = tensors.get(name).with_context(|| format!("lacks `{name}` — not a judge"))?;
        anyhow::ensure!(t.dims() == shape.as_slice(), "`{name}` has shape {:?}, expected {shape:?}", t.dims());
    }
    if let Some(extra) = tensors.keys().find(|k| !table.iter().any(|(n, _, _)| n == *k)) {
        anyhow::bail!("has `{extra}`, which the judge does not have");
    }
    Ok(Judge::new(VarBuilder::from_tensors(tensors, DType::F32, device), classes)?)
}
