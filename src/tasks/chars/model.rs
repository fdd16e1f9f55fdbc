//! A GPT-style character model: token and position embeddings, pre-LayerNorm blocks of causal
//! self-attention and a GELU MLP, a final LayerNorm and a linear head. Built only from candle ops that carry
//! gradients (`ops::layer_norm_slow`, `ops::softmax` — not `LayerNorm::forward` or `softmax_last_dim`,
//! whose results have no backward; see shared/CANDLE-NOTES.md).

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::init::Init;
use candle_nn::VarBuilder;

/// The numbers of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CharModelSpec {
    /// Distinct characters.
    pub vocab: usize,
    /// Characters the model sees at once (positions).
    pub context: usize,
    /// Width of the residual stream.
    pub width: usize,
    /// Blocks.
    pub layers: usize,
    /// Attention heads per block (`width` must divide by it).
    pub heads: usize,
}

/// Standard deviation of the initial weights (GPT-2's).
const INIT_STD: f64 = 0.02;

/// A linear layer `x W^T + b` with GPT-2's initialisation (normal, std 0.02 / `scale`; bias 0).
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(inputs: usize, outputs: usize, scale: f64, vb: VarBuilder) -> Result<Self> {
        let weight =
            vb.get_with_hints((outputs, inputs), "weight", Init::Randn { mean: 0.0, stdev: INIT_STD / scale })?;
        let bias = vb.get_with_hints(outputs, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }

    /// `x`: [N, inputs] → [N, outputs].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// LayerNorm with a learned scale and shift, through ops that have a backward.
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn new(width: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(width, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(width, "bias", Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, 1e-5)
    }
}

struct Block {
    norm1: Norm,
    qkv: Linear,
    proj: Linear,
    norm2: Norm,
    fc: Linear,
    out: Linear,
}

/// The character model.
pub struct CharModel {
    spec: CharModelSpec,
    token_embed: Tensor,
    position_embed: Tensor,
    blocks: Vec<Block>,
    norm: Norm,
    head: Linear,
}

impl CharModel {
    /// The model under `vb`: `token_embed`, `position_embed`, `blocks.N.{norm1,qkv,proj,norm2,fc,out}`,
    /// `norm`, `head`.
    pub fn new(spec: CharModelSpec, vb: VarBuilder) -> Result<Self> {
        if spec.heads == 0 || spec.width % spec.heads != 0 {
            candle_core::bail!("width {} does not divide into {} heads", spec.width, spec.heads);
        }
        let w = spec.width;
        let embed = Init::Randn { mean: 0.0, stdev: INIT_STD };
        // Residual projections start smaller, so the stream's variance does not grow with depth.
        let residual = (2.0 * spec.layers as f64).sqrt();
        let blocks = (0..spec.layers)
            .map(|i| {
                let vb = vb.pp(format!("blocks.{i}"));
                Ok(Block {
                    norm1: Norm::new(w, vb.pp("norm1"))?,
                    qkv: Linear::new(w, 3 * w, 1.0, vb.pp("qkv"))?,
                    proj: Linear::new(w, w, residual, vb.pp("proj"))?,
                    norm2: Norm::new(w, vb.pp("norm2"))?,
                    fc: Linear::new(w, 4 * w, 1.0, vb.pp("fc"))?,
                    out: Linear::new(4 * w, w, residual, vb.pp("out"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            spec,
            token_embed: vb.get_with_hints((spec.vocab, w), "token_embed", embed)?,
            position_embed: vb.get_with_hints((spec.context, w), "position_embed", embed)?,
            blocks,
            norm: Norm::new(w, vb.pp("norm"))?,
            head: Linear::new(w, spec.vocab, 1.0, vb.pp("head"))?,
        })
    }

    /// The model's numbers.
    pub fn spec(&self) -> CharModelSpec {
        self.spec
    }

    /// Logits [B·T, vocab] of the next character at every position of `tokens` [B, T] (u32, T ≤ context).
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        if t > self.spec.context {
            candle_core::bail!("{t} characters given, the model sees at most {}", self.spec.context);
        }
        let (w, heads) = (self.spec.width, self.spec.heads);
        let head_dim = w / heads;
        let device = tokens.device();
        let tokens = tokens.flatten_all()?;
        let x = self.token_embed.index_select(&tokens, 0)?.reshape((b, t, w))?;
        let positions = self.position_embed.narrow(0, 0, t)?;
        let mut x = x.broadcast_add(&positions)?.reshape((b * t, w))?;
        let mask = causal_mask(t, device)?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        for block in &self.blocks {
            let h = block.norm1.forward(&x)?;
            let qkv = block.qkv.forward(&h)?.reshape((b, t, 3, heads, head_dim))?;
            let pick = |i: usize| -> Result<Tensor> { qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous() };
            let (q, k, v) = (pick(0)?, pick(1)?, pick(2)?); // [B, H, T, Dh]
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&mask)?;
            let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
            let attended = weights.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((b * t, w))?;
            x = (x + block.proj.forward(&attended)?)?;
            let h = block.norm2.forward(&x)?;
            let h = block.fc.forward(&h)?.gelu_erf()?;
            x = (x + block.out.forward(&h)?)?;
        }
        self.head.forward(&self.norm.forward(&x)?)
    }

    /// Mean cross-entropy (nats per character) of predicting `targets` [B, T] from `tokens` [B, T].
    pub fn loss(&self, tokens: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logits = self.forward(tokens)?;
        candle_nn::loss::cross_entropy(&logits, &targets.flatten_all()?)
    }
}

/// 0 on and below the diagonal, a large negative number above it: [T, T], added to attention scores.
fn causal_mask(t: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..t * t).map(|i| if i % t > i / t { -1e9 } else { 0.0 }).collect();
    Tensor::from_vec(values, (t, t), device)?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CharModelSpec {
        CharModelSpec { vocab: 13, context: 8, width: 16, layers: 2, heads: 2 }
    }

    #[test]
    fn every_variable_gets_a_gradient() {
        let build = |vb: VarBuilder| CharModel::new(spec(), vb).map(|_| ());
        let varmap = crate::task::init::seeded_varmap(1, &Device::Cpu, build).unwrap();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = CharModel::new(spec(), vb).unwrap();
        let tokens = Tensor::from_vec((0..16u32).map(|i| i % 13).collect::<Vec<_>>(), (2, 8), &Device::Cpu).unwrap();
        let targets =
            Tensor::from_vec((0..16u32).map(|i| (i * 5 + 1) % 13).collect::<Vec<_>>(), (2, 8), &Device::Cpu).unwrap();
        let loss = model.loss(&tokens, &targets).unwrap();
        let grads = loss.backward().unwrap();
        let vars = varmap.data().lock().unwrap();
        assert_eq!(vars.len(), 2 + 2 * 12 + 2 + 2);
        for (name, var) in vars.iter() {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name} has no gradient"));
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            // Position rows beyond the 8 used still get zeros; every tensor as a whole moves.
            assert!(norm > 0.0, "{name} has a zero gradient");
        }
    }

    #[test]
    fn a_position_sees_only_earlier_characters() {
        let build = |vb: VarBuilder| CharModel::new(spec(), vb).map(|_| ());
        let varmap = crate::task::init::seeded_varmap(2, &Device::Cpu, build).unwrap();
        let model = CharModel::new(spec(), VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
        let a = Tensor::from_vec(vec![1u32, 2, 3, 4, 5, 6, 7, 8], (1, 8), &Device::Cpu).unwrap();
        let b = Tensor::from_vec(vec![1u32, 2, 3, 4, 9, 10, 11, 12], (1, 8), &Device::Cpu).unwrap();
        let la = model.forward(&a).unwrap().to_vec2::<f32>().unwrap();
        let lb = model.forward(&b).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(la[..4], lb[..4], "changing later characters changed earlier predictions");
        assert_ne!(la[4], lb[4]);
    }
}
