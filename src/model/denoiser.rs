//! The denoiser: a DiT with adaLN-Zero blocks and an optional zero-gated spatial (layout) adapter, exactly as
//! `shared/reference/dit_reference.py` defines it.

use candle_core::{bail, DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::features::Features;
use super::layers::{
    chunk_last, layer_norm, linear, norm_modulate, CrossAttention, Linear, Mlp, SelfAttention, SiluMlp,
};
use super::ops::gated_residual;
use super::spec::{ModelSpec, ParamInit, BBOX_FEATURES, FREQ_DIM, MLP_RATIO};

/// The spatial adapter of one block: `x + gate · adapter_attn(adapter_norm(x), layout, bias)`.
#[derive(Debug, Clone)]
struct Adapter {
    attn: CrossAttention,
    /// Raw gate `[1]` (zero-initialised, no tanh).
    gate: Tensor,
}

/// One DiT block (`blocks.N`).
#[derive(Debug, Clone)]
struct Block {
    attn: SelfAttention,
    mlp: Mlp,
    /// `ada`: `width → 6·width` on `silu(c)`: shift, scale, gate of attention, then of the MLP.
    ada: Linear,
    adapter: Option<Adapter>,
}

impl Block {
    fn new(spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        let w = spec.width;
        let adapter = if spec.adapter {
            Some(Adapter {
                attn: CrossAttention::new(w, spec.heads, vb.pp("adapter_attn"))?,
                gate: vb.get_with_hints(1, "adapter_gate", ParamInit::Zeros.hint())?,
            })
        } else {
            None
        };
        Ok(Self {
            attn: SelfAttention::new(w, spec.heads, vb.pp("attn"))?,
            mlp: Mlp::new(w, MLP_RATIO * w, vb.pp("mlp"))?,
            ada: linear(w, 6 * w, true, vb.pp("ada"))?,
            adapter,
        })
    }

    /// Tokens x `[B·N, W]`, silu_c `[B, W]`, layout tokens `[B·K, W]`, box bias `[B, N, K]`.
    fn forward(&self, x: &Tensor, silu_c: &Tensor, layout: &Tensor, bias: &Tensor, gate_scale: f64) -> Result<Tensor> {
        let (batch, width) = silu_c.dims2()?;
        let ada = self.ada.forward(silu_c)?;
        let mut x = self.attn.branch(x, &ada.narrow(1, 0, 3 * width)?)?;
        if let Some(adapter) = &self.adapter {
            if gate_scale != 0.0 {
                let gate =
                    if gate_scale == 1.0 { adapter.gate.clone() } else { adapter.gate.affine(gate_scale, 0.0)? };
                let out = adapter.attn.forward(&layer_norm(&x)?, layout, bias)?;
                x = gated_residual(&x, &out, &gate.broadcast_as((batch, width))?)?;
            }
        }
        self.mlp.branch(&x, &ada.narrow(1, 3 * width, 3 * width)?)
    }
}

/// Rectified-flow velocity model `v(x_t, t, class, layout)` for RGB images in [-1, 1].
///
/// Holds the parameter tensors of the `VarMap` it was built on (updating those vars updates the model) and
/// the constant feature tables. Everything is f32.
#[derive(Debug, Clone)]
pub struct Denoiser {
    spec: ModelSpec,
    patch_embed: Linear,
    t_mlp: SiluMlp,
    class_embed: Embedding,
    box_mlp: SiluMlp,
    layout_class_embed: Embedding,
    blocks: Vec<Block>,
    final_ada: Linear,
    final_linear: Linear,
    features: Features,
}

impl Denoiser {
    /// Builds the modules on `vb` (parameter names exactly as the reference: `patch_embed.weight`,
    /// `blocks.0.attn.qkv.weight`, `blocks.0.adapter_gate`, ...). Vars missing from a `VarMap` behind `vb` are
    /// created with the reference's distributions but candle's unseeded RNG: use [`super::build_model`] for
    /// reproducible weights.
    pub fn new(spec: ModelSpec, vb: VarBuilder) -> Result<Self> {
        if let Err(e) = spec.check() {
            bail!("{e}")
        }
        let w = spec.width;
        let embedding = |name: &str| -> Result<Embedding> {
            let table =
                vb.get_with_hints((spec.classes + 1, w), &format!("{name}.weight"), ParamInit::Normal.hint())?;
            Ok(Embedding::new(table, w))
        };
        let blocks =
            (0..spec.depth).map(|i| Block::new(&spec, vb.pp(format!("blocks.{i}")))).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            spec,
            patch_embed: linear(spec.patch_dim(), w, false, vb.pp("patch_embed"))?,
            t_mlp: SiluMlp::new(FREQ_DIM, w, vb.pp("t_mlp"))?,
            class_embed: embedding("class_embed")?,
            box_mlp: SiluMlp::new(BBOX_FEATURES, w, vb.pp("box_mlp"))?,
            layout_class_embed: embedding("layout_class_embed")?,
            blocks,
            final_ada: linear(w, 2 * w, true, vb.pp("final_ada"))?,
            final_linear: linear(w, spec.patch_dim(), true, vb.pp("final_linear"))?,
            features: Features::new(&spec, vb.device())?,
        })
    }

    /// The architecture.
    pub fn spec(&self) -> ModelSpec {
        self.spec
    }

    /// v(x_t, t, y, layout): x `[B, 3, H, W]` f32, t `[B]` f32, y `[B]` u32, boxes `[B, slots, 4]` f32 as
    /// `(x0, y0, x1, y1)` in [0, 1], box_classes `[B, slots]` u32 (null class = empty slot) → `[B, 3, H, W]`.
    pub fn forward(&self, x: &Tensor, t: &Tensor, y: &Tensor, boxes: &Tensor, box_classes: &Tensor) -> Result<Tensor> {
        self.forward_with_gate_scale(x, t, y, boxes, box_classes, 1.0)
    }

    /// As [`Self::forward`], with every adapter gate multiplied by `gate_scale` (1.0 = as trained; 0.0 skips the
    /// adapter entirely, which equals the model without adapter contribution).
    pub fn forward_with_gate_scale(
        &self,
        x: &Tensor,
        t: &Tensor,
        y: &Tensor,
        boxes: &Tensor,
        box_classes: &Tensor,
        gate_scale: f64,
    ) -> Result<Tensor> {
        let b = self.check_inputs(x, t, y, boxes, box_classes)?;
        let (p, g, w, k) = (self.spec.patch, self.spec.grid(), self.spec.width, self.spec.slots);
        let n = g * g;
        // Tokens are kept 2-D, [B·N, W], through the blocks. Patches flattened as (c, ph, pw), tokens row-major.
        let patches = x.reshape((b, 3, g, p, g, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b * n, 3 * p * p))?;
        let h = self.patch_embed.forward(&patches)?.reshape((b, n, w))?.broadcast_add(&self.features.pos)?;
        let c = (self.t_mlp.forward(&self.features.timestep(t)?)? + self.class_embed.forward(y)?)?;
        let silu_c = c.silu()?;
        let bbox = self.features.bbox(boxes)?.reshape((b * k, ()))?;
        let layout = (self.box_mlp.forward(&bbox)? + self.layout_class_embed.forward(&box_classes.flatten_all()?)?)?;
        let bias = self.features.box_bias(boxes, box_classes)?;
        let mut h = h.reshape((b * n, w))?;
        for block in &self.blocks {
            h = block.forward(&h, &silu_c, &layout, &bias, gate_scale)?;
        }
        let m = chunk_last(&self.final_ada.forward(&silu_c)?, 2)?;
        let out = self.final_linear.forward(&norm_modulate(&h, &m[0], &m[1])?)?; // [B·N, 3p²]
        out.reshape((b, g, g, 3, p, p))?.permute((0, 3, 1, 4, 2, 5))?.reshape((b, 3, g * p, g * p))
    }

    /// Each block's raw adapter gate value (empty without adapter), read back in one copy.
    pub fn gate_values(&self) -> Result<Vec<f32>> {
        let gates = self
            .blocks
            .iter()
            .filter_map(|b| b.adapter.as_ref())
            .map(|a| a.gate.to_dtype(DType::F32)?.flatten_all())
            .collect::<Result<Vec<_>>>()?;
        if gates.is_empty() {
            return Ok(Vec::new());
        }
        Tensor::cat(&gates, 0)?.to_vec1::<f32>()
    }

    /// Checks shapes and dtypes of a forward's inputs; returns the batch size. Errors name the input.
    fn check_inputs(&self, x: &Tensor, t: &Tensor, y: &Tensor, boxes: &Tensor, box_classes: &Tensor) -> Result<usize> {
        let s = &self.spec;
        let b = x.dim(0)?;
        let expect = |name: &str, t: &Tensor, dims: &[usize], dtype: DType| -> Result<()> {
            if t.dims() != dims {
                bail!("denoiser input `{name}`: expected shape {dims:?}, got {:?}", t.dims())
            }
            if t.dtype() != dtype {
                bail!("denoiser input `{name}`: expected dtype {dtype:?}, got {:?}", t.dtype())
            }
            Ok(())
        };
        expect("x", x, &[b, 3, s.image_size, s.image_size], DType::F32)?;
        expect("t", t, &[b], DType::F32)?;
        expect("y", y, &[b], DType::U32)?;
        expect("boxes", boxes, &[b, s.slots, 4], DType::F32)?;
        expect("box_classes", box_classes, &[b, s.slots], DType::U32)?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use rand::{Rng, SeedableRng};

    use crate::config::ModelPreset;
    use crate::model::cpu::{available_simd_paths, with_reference_ops, with_simd_path, SimdPath};
    use crate::model::{build_model, flow_matching_loss, randomize_zero_init, ModelSpec};

    /// The fused CPU path, compiled for each instruction set this CPU has (baseline, AVX2, AVX-512), and the
    /// basic-op path (what runs off the CPU) agree on the whole model: output and every parameter's gradient.
    #[test]
    fn fused_path_matches_basic_op_path() {
        for path in available_simd_paths() {
            with_simd_path(path, || fused_path_matches_basic_op_path_on(path));
        }
    }

    /// A tiny model with an adapter (zero-initialised parameters randomised) and a batch of 3 inputs.
    fn tiny_model_and_inputs() -> (candle_nn::VarMap, crate::model::Denoiser, [Tensor; 6]) {
        let spec = ModelSpec::from_preset(ModelPreset::Tiny, true);
        let (varmap, model) = build_model(spec, &Device::Cpu, 3).unwrap();
        randomize_zero_init(spec, &varmap, 4).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let b = 3;
        let mut uniform =
            |n: usize, lo: f32, hi: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(lo..hi)).collect() };
        let dev = Device::Cpu;
        let x0 = Tensor::from_vec(uniform(b * 3 * 32 * 32, -1.0, 1.0), (b, 3, 32, 32), &dev).unwrap();
        let eps = Tensor::from_vec(uniform(b * 3 * 32 * 32, -2.0, 2.0), (b, 3, 32, 32), &dev).unwrap();
        let t = Tensor::from_vec(uniform(b, 0.0, 1.0), b, &dev).unwrap();
        let boxes = Tensor::from_vec(uniform(b * 4 * 4, 0.0, 1.0), (b, 4, 4), &dev).unwrap();
        let y = Tensor::from_vec(vec![0u32, 2, 4], b, &dev).unwrap();
        let box_classes = Tensor::from_vec(vec![0u32, 1, 4, 3, 4, 4, 4, 4, 2, 2, 1, 0], (b, 4), &dev).unwrap();
        (varmap, model, [x0, eps, t, boxes, y, box_classes])
    }

    fn fused_path_matches_basic_op_path_on(path: SimdPath) {
        let (varmap, model, [x0, eps, t, boxes, y, box_classes]) = tiny_model_and_inputs();
        let run = || {
            let loss = flow_matching_loss(&model, &x0, &t, &eps, &y, &boxes, &box_classes).unwrap();
            let v = model.forward(&x0, &t, &y, &boxes, &box_classes).unwrap();
            (v, loss.backward().unwrap())
        };
        let (v_fused, g_fused) = run();
        let (v_ref, g_ref) = with_reference_ops(run);
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(diff(&v_fused, &v_ref) < 2e-5, "{path:?}: outputs differ by {}", diff(&v_fused, &v_ref));
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let (a, b) = (g_fused.get(var.as_tensor()).unwrap(), g_ref.get(var.as_tensor()).unwrap());
            let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            let d = diff(a, b);
            assert!(d <= 1e-4 * scale.max(1e-3), "{path:?}: {name}: gradients differ by {d} (scale {scale})");
        }
    }

    /// bf16 autocast (what a CUDA run with `precision = "bf16"` computes, here on the CPU's basic ops): the loss
    /// and every gradient stay f32 and close to the f32 ones, yet differ from them (the products did run in
    /// bf16).
    #[test]
    fn bf16_autocast_keeps_f32_gradients_close_to_the_f32_ones() {
        let (varmap, model, [x0, eps, t, boxes, y, box_classes]) = tiny_model_and_inputs();
        let run = || {
            let loss = flow_matching_loss(&model, &x0, &t, &eps, &y, &boxes, &box_classes).unwrap();
            (loss.to_scalar::<f32>().unwrap(), loss.backward().unwrap())
        };
        let (loss_f32, g_f32) = with_reference_ops(run);
        let (loss_bf16, g_bf16) = crate::model::with_autocast(Some(DType::BF16), run);
        assert!(crate::model::precision::autocast_dtype().is_none(), "the setting ends with the closure");
        let relative = ((loss_bf16 - loss_f32) / loss_f32).abs();
        assert!(relative < 2e-2 && relative > 0.0, "loss {loss_bf16} in bf16, {loss_f32} in f32");
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            let (a, b) = (g_bf16.get(var.as_tensor()).unwrap(), g_f32.get(var.as_tensor()).unwrap());
            assert_eq!(a.dtype(), DType::F32, "{name}: the gradient of an f32 weight is f32");
            let (a, b) = (flat(a), flat(b));
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
            let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            let cosine = dot / (norm(&a) * norm(&b)).max(1e-30);
            assert!(cosine > 0.98 || norm(&b) < 1e-6, "{name}: bf16 gradient at cosine {cosine} to the f32 one");
        }
    }
}
