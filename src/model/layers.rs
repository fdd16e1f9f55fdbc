//! Building blocks of the denoiser: linear layers on `[B, N, C]`, parameter-free LayerNorm, adaLN modulation,
//! multi-head self- and cross-attention. Every op used here has a backward in candle (see `CANDLE-NOTES.md`).

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use super::ops;
use super::spec::{ParamInit, LN_EPS};

/// `nn.Linear(fan_in, fan_out)` named `weight` / `bias` under `vb`, initialised (when created) as the reference.
pub(crate) fn linear(fan_in: usize, fan_out: usize, zero: bool, vb: VarBuilder) -> Result<Linear> {
    let init = if zero { ParamInit::Zeros } else { ParamInit::Uniform { fan_in } };
    let weight = vb.get_with_hints((fan_out, fan_in), "weight", init.hint())?;
    let bias = vb.get_with_hints(fan_out, "bias", init.hint())?;
    Ok(Linear::new(weight, Some(bias)))
}

/// LayerNorm over the last dimension without affine parameters, `eps = 1e-6` (biased variance, as PyTorch).
pub(crate) fn layer_norm(x: &Tensor) -> Result<Tensor> {
    ops::layer_norm(x, LN_EPS)
}

/// adaLN modulation: `x * (1 + scale[:, None]) + shift[:, None]`; x `[B, N, C]`, shift and scale `[B, C]`.
pub(crate) fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let scale = (scale + 1.0)?.unsqueeze(1)?;
    x.broadcast_mul(&scale)?.broadcast_add(&shift.unsqueeze(1)?)
}

/// Splits `[B, L, parts·W]` (heads `h`, `W = h·d`) into `parts` tensors `[B·h, L, d]`, each contiguous, with a
/// single copy: `reshape(B, L, parts, h, d).permute(2, 0, 3, 1, 4)`.
fn split_heads(x: &Tensor, parts: usize, heads: usize) -> Result<Vec<Tensor>> {
    let (b, l, pw) = x.dims3()?;
    let d = pw / parts / heads;
    let x = x.reshape((b, l, parts, heads, d))?.permute((2, 0, 3, 1, 4))?.contiguous()?;
    (0..parts).map(|i| x.get(i)?.reshape((b * heads, l, d))).collect()
}

/// Inverse of the head split for one tensor: `[B·h, L, d]` to `[B, L, h·d]`.
fn merge_heads(x: &Tensor, batch: usize) -> Result<Tensor> {
    let (bh, l, d) = x.dims3()?;
    let heads = bh / batch;
    x.reshape((batch, heads, l, d))?.transpose(1, 2)?.reshape((batch, l, heads * d))
}

/// `softmax(q kᵀ · scale + bias) v` on `[B·h, N, d]` queries and `[B·h, M, d]` keys / values; `bias` (if any)
/// is `[B, N, M]`, shared by the heads.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, bias: Option<&Tensor>, batch: usize) -> Result<Tensor> {
    let att = q.matmul(&k.t()?)?.affine(scale, 0.0)?;
    let att = match bias {
        None => att,
        Some(bias) => {
            let (bh, n, m) = att.dims3()?;
            att.reshape((batch, bh / batch, n, m))?.broadcast_add(&bias.unsqueeze(1)?)?.reshape((bh, n, m))?
        }
    };
    ops::softmax_last_dim(&att)?.matmul(v)
}

/// Multi-head self-attention with a fused `qkv` projection (`attn.qkv`, `attn.proj`).
#[derive(Debug, Clone)]
pub(crate) struct SelfAttention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    scale: f64,
}

impl SelfAttention {
    /// Builds `qkv` (`width → 3·width`) and `proj` (`width → width`) under `vb`.
    pub(crate) fn new(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            qkv: linear(width, 3 * width, false, vb.pp("qkv"))?,
            proj: linear(width, width, false, vb.pp("proj"))?,
            heads,
            scale: 1.0 / ((width / heads) as f64).sqrt(),
        })
    }

    /// x `[B, N, W]` to `[B, N, W]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let batch = x.dim(0)?;
        let qkv = split_heads(&self.qkv.forward(x)?, 3, self.heads)?;
        let out = attend(&qkv[0], &qkv[1], &qkv[2], self.scale, None, batch)?;
        self.proj.forward(&merge_heads(&out, batch)?)
    }
}

/// Multi-head cross-attention from image tokens to layout tokens (`adapter_attn.q`, `.kv`, `.proj`).
#[derive(Debug, Clone)]
pub(crate) struct CrossAttention {
    q: Linear,
    kv: Linear,
    proj: Linear,
    heads: usize,
    scale: f64,
}

impl CrossAttention {
    /// Builds `q` (`width → width`), `kv` (`width → 2·width`) and `proj` under `vb`.
    pub(crate) fn new(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            q: linear(width, width, false, vb.pp("q"))?,
            kv: linear(width, 2 * width, false, vb.pp("kv"))?,
            proj: linear(width, width, false, vb.pp("proj"))?,
            heads,
            scale: 1.0 / ((width / heads) as f64).sqrt(),
        })
    }

    /// x `[B, N, W]` attends to ctx `[B, K, W]` with logit bias `[B, N, K]`; returns `[B, N, W]`.
    pub(crate) fn forward(&self, x: &Tensor, ctx: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let batch = x.dim(0)?;
        let q = split_heads(&self.q.forward(x)?, 1, self.heads)?;
        let kv = split_heads(&self.kv.forward(ctx)?, 2, self.heads)?;
        let out = attend(&q[0], &kv[0], &kv[1], self.scale, Some(bias), batch)?;
        self.proj.forward(&merge_heads(&out, batch)?)
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

    /// x `[..., W]` to `[..., W]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&ops::gelu_tanh(&self.fc1.forward(x)?)?)
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

    /// x `[..., fan_in]` to `[..., width]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.silu()?)
    }
}

/// Splits `[B, parts·W]` into `parts` contiguous `[B, W]` chunks (like `torch.chunk(parts, dim=-1)`).
pub(crate) fn chunk_last(x: &Tensor, parts: usize) -> Result<Vec<Tensor>> {
    let w = x.dim(D::Minus1)? / parts;
    (0..parts).map(|i| x.narrow(D::Minus1, i * w, w)?.contiguous()).collect()
}
