//! Architecture numbers of a preset ([`ModelSpec`]) and the parameter table they imply: names, shapes and
//! how the reference initialises each parameter.

use serde::{Deserialize, Serialize};

use crate::config::ModelPreset;

/// Width multiplier of each block's MLP hidden layer.
pub(crate) const MLP_RATIO: usize = 4;
/// Sinusoidal timestep features fed to `t_mlp`.
pub(crate) const FREQ_DIM: usize = 256;
/// Fourier frequencies per bbox coordinate.
pub(crate) const BBOX_FREQS: usize = 8;
/// Width of a slot's bbox Fourier features: 4 coordinates × (sin, cos) × [`BBOX_FREQS`].
pub(crate) const BBOX_FEATURES: usize = 4 * 2 * BBOX_FREQS;
/// Adapter attention-logit bias: `+BOX_BIAS` inside a real slot's box, `-BOX_BIAS` outside, 0 for null slots.
pub(crate) const BOX_BIAS: f64 = 4.0;
/// LayerNorm epsilon of every (parameter-free) LayerNorm.
pub(crate) const LN_EPS: f64 = 1e-6;

/// Architecture numbers of a preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Side of the square RGB input image, in pixels.
    pub image_size: usize,
    /// Side of a square patch, in pixels; one token per patch.
    pub patch: usize,
    /// Token width.
    pub width: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads (the width must be divisible by them).
    pub heads: usize,
    /// Object / image classes; class index `classes` is the null class.
    pub classes: usize,
    /// Layout slots (boxes) per image.
    pub slots: usize,
    /// Whether every block carries the gated spatial adapter.
    pub adapter: bool,
}

impl ModelSpec {
    /// The architecture of a size preset (see `shared/reference/dit_reference.py`), with or without the adapter.
    pub fn from_preset(preset: ModelPreset, adapter: bool) -> Self {
        let (width, depth, heads) = match preset {
            ModelPreset::Tiny => (64, 2, 2),
            ModelPreset::Small => (96, 4, 4),
            ModelPreset::Base => (128, 6, 4),
        };
        Self { image_size: 32, patch: 4, width, depth, heads, classes: 4, slots: 4, adapter }
    }

    /// The architecture a run's `[model]` settings give for a dataset of `classes` classes: the preset at the
    /// configured resolution (32 px with patch 4, or 64 px with patch 8: the same 8×8 tokens).
    pub fn for_config(model: &crate::config::ModelConfig, classes: usize) -> Self {
        let base = Self::from_preset(model.preset, model.adapter);
        let resolution = if model.resolution == 0 { base.image_size } else { model.resolution };
        Self { image_size: resolution, patch: resolution / base.grid(), classes, ..base }
    }

    /// The preset whose architecture this is (ignoring the adapter flag), if any.
    pub fn preset(&self) -> Option<ModelPreset> {
        [ModelPreset::Tiny, ModelPreset::Small, ModelPreset::Base].into_iter().find(|&p| {
            let preset = Self::from_preset(p, self.adapter);
            (preset.width, preset.depth, preset.heads) == (self.width, self.depth, self.heads)
        })
    }

    /// Index of the null class (guidance dropout, empty layout slots): equal to `classes`.
    pub fn null_class(&self) -> u32 {
        self.classes as u32
    }

    /// Tokens per image side: `image_size / patch`.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch
    }

    /// Tokens per image: `grid²`.
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Values in one flattened patch: `3 · patch²`.
    pub fn patch_dim(&self) -> usize {
        3 * self.patch * self.patch
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }

    /// Checks the numbers are usable (divisibility the architecture relies on); the error names the field.
    pub fn check(&self) -> Result<(), String> {
        let fail = |what: &str| Err(format!("model spec {self:?}: {what}"));
        if self.patch == 0 || self.image_size == 0 || self.image_size % self.patch != 0 {
            return fail("image_size must be a positive multiple of patch");
        }
        if self.heads == 0 || self.width % self.heads != 0 {
            return fail("width must be a multiple of heads");
        }
        if self.width == 0 || self.width % 4 != 0 {
            return fail("width must be a positive multiple of 4 (2-D sin-cos position embedding)");
        }
        if self.depth == 0 || self.slots == 0 || self.classes == 0 {
            return fail("depth, slots and classes must be positive");
        }
        Ok(())
    }
}

/// How the reference initialises one parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ParamInit {
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`: PyTorch's default for `nn.Linear` weight and bias.
    Uniform {
        /// Input features of the layer.
        fan_in: usize,
    },
    /// `N(0, 1)`: PyTorch's default for `nn.Embedding`.
    Normal,
    /// All zeros (adaLN-Zero modulation, final layers, adapter gates).
    Zeros,
}

impl ParamInit {
    /// The matching hint for `candle_nn::VarBuilder` (used when a var is created rather than supplied).
    pub(crate) fn hint(self) -> candle_nn::Init {
        match self {
            Self::Uniform { fan_in } => {
                let bound = 1.0 / (fan_in as f64).sqrt();
                candle_nn::Init::Uniform { lo: -bound, up: bound }
            }
            Self::Normal => candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 },
            Self::Zeros => candle_nn::Init::Const(0.0),
        }
    }
}

/// One parameter of the model: reference name, shape, initialisation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParamInfo {
    /// Name as in the PyTorch reference's `state_dict` (also the VarMap key).
    pub name: String,
    /// Shape; Linear weights are `[out, in]`.
    pub shape: Vec<usize>,
    /// Initialisation.
    pub init: ParamInit,
}

/// Every parameter of `spec`, sorted by name.
pub(crate) fn param_table(spec: ModelSpec) -> Vec<ParamInfo> {
    let mut out = Vec::new();
    let mut linear = |name: &str, fan_in: usize, fan_out: usize, zero: bool| {
        let init = if zero { ParamInit::Zeros } else { ParamInit::Uniform { fan_in } };
        out.push(ParamInfo { name: format!("{name}.weight"), shape: vec![fan_out, fan_in], init });
        out.push(ParamInfo { name: format!("{name}.bias"), shape: vec![fan_out], init });
    };
    let w = spec.width;
    linear("patch_embed", spec.patch_dim(), w, false);
    linear("t_mlp.0", FREQ_DIM, w, false);
    linear("t_mlp.2", w, w, false);
    linear("box_mlp.0", BBOX_FEATURES, w, false);
    linear("box_mlp.2", w, w, false);
    for i in 0..spec.depth {
        let b = format!("blocks.{i}");
        linear(&format!("{b}.attn.qkv"), w, 3 * w, false);
        linear(&format!("{b}.attn.proj"), w, w, false);
        linear(&format!("{b}.mlp.0"), w, MLP_RATIO * w, false);
        linear(&format!("{b}.mlp.2"), MLP_RATIO * w, w, false);
        linear(&format!("{b}.ada"), w, 6 * w, true);
        if spec.adapter {
            linear(&format!("{b}.adapter_attn.q"), w, w, false);
            linear(&format!("{b}.adapter_attn.kv"), w, 2 * w, false);
            linear(&format!("{b}.adapter_attn.proj"), w, w, false);
        }
    }
    linear("final_ada", w, 2 * w, true);
    linear("final_linear", w, spec.patch_dim(), true);
    for name in ["class_embed.weight", "layout_class_embed.weight"] {
        out.push(ParamInfo { name: name.to_string(), shape: vec![spec.classes + 1, w], init: ParamInit::Normal });
    }
    if spec.adapter {
        for i in 0..spec.depth {
            out.push(ParamInfo { name: format!("blocks.{i}.adapter_gate"), shape: vec![1], init: ParamInit::Zeros });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Sorted parameter names and shapes of a spec (computed from the spec; nothing is allocated).
pub fn param_shapes(spec: ModelSpec) -> Vec<(String, Vec<usize>)> {
    param_table(spec).into_iter().map(|p| (p.name, p.shape)).collect()
}

/// Number of scalar parameters of a spec.
pub fn param_count(spec: ModelSpec) -> usize {
    param_table(spec).iter().map(|p| p.shape.iter().product::<usize>()).sum()
}

/// Floating-point operations of one image's forward pass: every linear layer (2 per multiply-add, applied to
/// each token, each layout slot or once per image, as the layer is) and the attention products (scores and
/// weighted values: 2·T·T·W per block for self-attention, 2·T·K·W for the adapter's cross-attention).
/// Elementwise work (norms, activations, softmax) is not counted, as is usual for model FLOPs.
pub fn forward_flops_per_image(spec: ModelSpec) -> u64 {
    let (tokens, slots, width) = (spec.tokens() as u64, spec.slots as u64, spec.width as u64);
    let mut macs = 0u64;
    for (name, shape) in param_shapes(spec) {
        let [out, inputs] = shape[..] else { continue };
        if !name.ends_with(".weight") || (name.contains("embed.") && !name.starts_with("patch_embed.")) {
            continue; // embeddings are lookups
        }
        let rows = if name.starts_with("box_mlp.") || name.contains(".adapter_attn.kv.") {
            slots
        } else if name.starts_with("t_mlp.") || name.ends_with(".ada.weight") || name.starts_with("final_ada.") {
            1
        } else {
            tokens
        };
        macs += rows * (out * inputs) as u64;
    }
    let depth = spec.depth as u64;
    macs += depth * 2 * tokens * tokens * width;
    if spec.adapter {
        macs += depth * 2 * tokens * slots * width;
    }
    2 * macs
}

/// Floating-point operations of training on one image: the forward pass and a backward pass of twice its
/// cost (gradients of activations and of weights), the usual 3× rule.
pub fn train_flops_per_image(spec: ModelSpec) -> u64 {
    3 * forward_flops_per_image(spec)
}

/// True for the layout path's parameters: the layout encoder (`box_mlp.*`, `layout_class_embed.*`) and the
/// spatial adapter (`blocks.N.adapter_*`) — everything that only acts when an image has a layout. While the
/// gates are 0 none of them changes the output (or gets a gradient).
pub fn is_layout_param(name: &str) -> bool {
    is_adapter_param(name) || name.starts_with("box_mlp.") || name.starts_with("layout_class_embed.")
}

/// True for the spatial adapter's parameters (`blocks.N.adapter_*`).
pub fn is_adapter_param(name: &str) -> bool {
    let mut parts = name.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some("blocks"), Some(index), Some(module))
            if !index.is_empty() && index.bytes().all(|c| c.is_ascii_digit()) && module.starts_with("adapter_")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_flops_count_each_layer_on_its_rows() {
        // tiny with its adapter: width 64, 64 tokens, 4 slots, 2 blocks, patches of 48 values.
        let spec = ModelSpec::from_preset(ModelPreset::Tiny, true);
        let (w, t, k, p) = (64u64, 64u64, 4u64, 48u64);
        let block = w * 6 * w // ada, once per image
            + t * w * 3 * w + t * w * w + t * 2 * (w * 4 * w) // qkv, proj, mlp
            + t * w * w + k * w * 2 * w + t * w * w // adapter q, kv (slots), proj
            + 2 * t * t * w + 2 * t * k * w; // attention products
        let macs = t * p * w + (256 * w + w * w) + k * 2 * (w * w) + 2 * block + w * 2 * w + t * w * p;
        assert_eq!(forward_flops_per_image(spec), 2 * macs);
        assert_eq!(train_flops_per_image(spec), 6 * macs);
        let without = ModelSpec { adapter: false, ..spec };
        assert!(forward_flops_per_image(without) < forward_flops_per_image(spec));
    }
}
