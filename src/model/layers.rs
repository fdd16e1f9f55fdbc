//! Building blocks of the denoiser: linear layers on rows, parameter-free LayerNorm, adaLN modulation, MLPs,
//! multi-head self- and cross-attention. Every op used has a backward: the fused ops of [`super::ops`] and
//! [`super::attention`] bring their own (candle's LayerNorm / softmax have none, see `CANDLE-NOTES.md`).

use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

use super::spec::{ParamInit, LN_EPS};
use super::{attention, branches, ops};

/// `nn.Linear`: `x Wᵀ + b` on rows `[R, fan_in]` with weight `[fan_out, fan_in]` and bias `[fan_out]`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    /// Rows x `[R, fan_in]` to `[R, fan_out]` (one fused op on the CPU; under [`super::precision`]'s autocast,
    /// the product in its dtype).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match super::precision::autocast_dtype() {
            Some(dtype) => super::precision::linear_in(dtype, x, &self.weight, &self.bias),
            None => ops::linear(x, &self.weight, &self.bias),
        }
    }
}

/// `nn.Linear(fan_in, fan_out)` named `weight` / `bias` under `vb`, initialised (when created) as the reference.
pub(crate) fn linear(fan_in: usize, fan_out: usize, zero: bool, vb: VarBuilder) -> Result<Linear> {
    let init = if zero { ParamInit::Zeros } else { ParamInit::Uniform { fan_in } };
    let weight = vb.get_with_hints((fan_out, fan_in), "weight", init.hint())?;
    let bias = vb.get_with_hints(fan_out, "bias", init.hint())?;
    Ok(Linear { weight, bias })
}

/// LayerNorm over the last dimension without affine parameters, `eps = 1e-6` (biased variance, as PyTorch).
pub(crate) fn layer_norm(x: &Tensor) -> Result<Tensor> {
    ops::layer_norm(x, LN_EPS)
}

/// adaLN: `layer_norm(x) * (1 + scale[b]) + shift[b]`; tokens x `[B·N, C]`, shift and scale `[B, C]`.
pub(crate) fn norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    ops::layer_norm_modulate(x, shift, scale, LN_EPS)
}

/// Multi-head self-attention with a fused `qkv` projection (`attn.qkv`, `attn.proj`).
#[derive(Debug, Clone)]
pub(crate) struct SelfAttention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl SelfAttention {
    /// Builds `qkv` (`width → 3·width`) and `proj` (`width → width`) under `vb`.
    pub(crate) fn new(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            qkv: linear(width, 3 * width, false, vb.pp("qkv"))?,
            proj: linear(width, width, false, vb.pp("proj"))?,
            heads,
        })
    }

    /// Tokens x `[B·N, W]` of `batch` items to `[B·N, W]`.
    pub(crate) fn forward(&self, x: &Tensor, batch: usize) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?;
        self.proj.forward(&attention::self_attention(&qkv, batch, self.heads)?)
    }

    /// The block's whole attention branch `x + gate · attention(norm_modulate(x, shift, scale))` for tokens x
    /// `[B·N, W]` and modulation `[B, 3W]` (shift, scale, gate side by side): one fused node on the CPU.
    pub(crate) fn branch(&self, x: &Tensor, modulation: &Tensor) -> Result<Tensor> {
        let w = x.dim(D::Minus1)?;
        if !super::cpu::fused(x) {
            let part = |i: usize| modulation.narrow(D::Minus1, i * w, w)?.contiguous();
            let attn = self.forward(&norm_modulate(x, &part(0)?, &part(1)?)?, modulation.dim(0)?)?;
            return ops::gated_residual(x, &attn, &part(2)?);
        }
        let (qkv, proj) = (&self.qkv, &self.proj);
        let params = branches::pack(&[&qkv.weight, &qkv.bias, &proj.weight, &proj.bias])?;
        branches::attention_branch(x, modulation, &params, self.heads, LN_EPS)
    }
}

/// Multi-head cross-attention from image tokens to layout tokens (`adapter_attn.q`, `.kv`, `.proj`).
#[derive(Debug, Clone)]
pub(crate) struct CrossAttention {
    q: Linear,
    kv: Linear,
    proj: Linear,
    heads: usize,
}

impl CrossAttention {
    /// Builds `q` (`width → width`), `kv` (`width → 2·width`) and `proj` under `vb`.
    pub(crate) fn new(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: linear(width, width, false, vb.pp("q"))?,
            kv: linear(width, 2 * width, false, vb.pp("kv"))?,
            proj: linear(width, width, false, vb.pp("proj"))?,
            heads,
        })
    }

    /// Tokens x `[B·N, W]` attend to context tokens ctx `[B·K, W]` with logit bias `[B, N, K]`; returns
    /// `[B·N, W]`.
    pub(crate) fn forward(&self, x: &Tensor, ctx: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let q = self.q.forward(x)?;
        let kv = self.kv.forward(ctx)?;
        self.proj.forward(&attention::cross_attention(&q, &kv, bias, self.heads)?)
    }
}

/// The block MLP: `mlp.0` (`width → 4·width`), GELU (tanh approximation), `mlp.2` (`4·width → width`).
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    /// Builds `0` and `2` under `vb` (the indices of the reference's `nn.Sequential`).
    pub(crate) fn new(width: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { fc1: linear(width, hidden, false, vb.pp("0"))?, fc2: linear(hidden, width, false, vb.pp("2"))? })
    }

    /// Rows x `[R, W]` to `[R, W]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&ops::gelu_tanh(&self.fc1.forward(x)?)?)
    }

    /// The block's whole MLP branch `x + gate · mlp(norm_modulate(x, shift, scale))` for tokens x `[B·N, W]`
    /// and modulation `[B, 3W]` (shift, scale, gate side by side): one fused node on the CPU.
    pub(crate) fn branch(&self, x: &Tensor, modulation: &Tensor) -> Result<Tensor> {
        let w = x.dim(D::Minus1)?;
        if !super::cpu::fused(x) {
            let part = |i: usize| modulation.narrow(D::Minus1, i * w, w)?.contiguous();
            let mlp = self.forward(&norm_modulate(x, &part(0)?, &part(1)?)?)?;
            return ops::gated_residual(x, &mlp, &part(2)?);
        }
        let (fc1, fc2) = (&self.fc1, &self.fc2);
        let params = branches::pack(&[&fc1.weight, &fc1.bias, &fc2.weight, &fc2.bias])?;
        branches::mlp_branch(x, modulation, &params, fc1.bias.dim(0)?, LN_EPS)
    }
}

/// Two linear layers with SiLU between (`0`, `2`), as `t_mlp` and `box_mlp`.
#[derive(Debug, Clone)]
pub(crate) struct SiluMlp {
    fc1: Linear,
    fc2: Linear,
}

impl SiluMlp {
    /// Builds `0` (`fan_in → width`) and `2` (`width → width`) under `vb`.
    pub(crate) fn new(fan_in: usize, width: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { fc1: linear(fan_in, width, false, vb.pp("0"))?, fc2: linear(width, width, false, vb.pp("2"))? })
    }

    /// Rows x `[R, fan_in]` to `[R, width]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.silu()?)
    }
}

/// Splits `[B, parts·W]` into `parts` contiguous `[B, W]` chunks (like `torch.chunk(parts, dim=-1)`).
pub(crate) fn chunk_last(x: &Tensor, parts: usize) -> Result<Vec<Tensor>> {
    let w = x.dim(D::Minus1)? / parts;
    (0..parts).map(|i| x.narrow(D::Minus1, i * w, w)?.contiguous()).collect()
}
