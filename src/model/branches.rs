//! Whole residual branches of a DiT block as one graph node each, on the CPU.
//!
//! Every node of candle's graph costs its backward a zero-filled gradient buffer and an add per input, and
//! every matmul a zero-filled output: on this model's small matrices that was a fifth of a training step.
//! A fused branch keeps its intermediates to itself and computes its backward with [`super::matmul`] into
//! buffers written once. Its parameters enter as one packed vector (a concatenation: cheap, and its backward
//! hands each parameter its part).
//!
//! A branch is `x + gate · inner(layer_norm(x) · (1 + scale) + shift)` with `(shift, scale, gate)` of each
//! item from adaLN, and `inner` the MLP (fc1, GELU, fc2) or the self-attention (qkv, attention, proj). Off the
//! CPU, and in tests as the oracle, the same maths runs as the separate ops of [`super::ops`] and
//! [`super::attention`] ([`super::layers`]).

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::attention::SelfAttention;
use super::cpu::{cpu_tensor, slice, with_data};
use super::matmul::{matmul, Mat};
use super::ops::{gated_residual_rows, gelu_grad_values, gelu_values, linear_backward, ln_backward, ln_forward};

/// The parameters of a branch in one vector: each flattened, in order.
pub(crate) fn pack(params: &[&Tensor]) -> Result<Tensor> {
    let flat = params.iter().map(|p| p.flatten_all()).collect::<Result<Vec<_>>>()?;
    Tensor::cat(&flat, 0)
}

/// The fused MLP branch (module doc): x `[B·N, W]`, modulation `[B, 3W]` (shift, scale, gate of each item
/// side by side), params = [`pack`] of fc1 weight `[H, W]`, fc1 bias `[H]`, fc2 weight `[W, H]`, fc2 bias
/// `[W]`. Returns `[B·N, W]`.
pub(crate) fn mlp_branch(x: &Tensor, modulation: &Tensor, params: &Tensor, hidden: usize, eps: f64) -> Result<Tensor> {
    let width = x.dim(1)?;
    branch(x, modulation, params, eps, MlpInner { width, hidden })
}

/// The fused attention branch: `x + gate · proj(self_attention(qkv(layer_norm(x) · (1 + scale) + shift)))`;
/// params = [`pack`] of qkv weight `[3W, W]`, qkv bias `[3W]`, proj weight `[W, W]`, proj bias `[W]`.
pub(crate) fn attention_branch(
    x: &Tensor,
    modulation: &Tensor,
    params: &Tensor,
    heads: usize,
    eps: f64,
) -> Result<Tensor> {
    let (rows, width) = x.dims2()?;
    let items = modulation.dim(0)?;
    if heads == 0 || width % heads != 0 || items == 0 || rows % items != 0 {
        bail!("attention branch: tokens {:?} do not split into {items} items and {heads} heads", x.dims())
    }
    let attention = SelfAttention::new(items, heads, width / heads);
    branch(x, modulation, params, eps, AttentionInner { width, attention })
}

/// Checks the shapes and applies the branch around `inner`.
fn branch<I: Inner>(x: &Tensor, modulation: &Tensor, params: &Tensor, eps: f64, inner: I) -> Result<Tensor> {
    let (rows, width) = x.dims2()?;
    let (items, three_w) = modulation.dims2()?;
    let name = inner.name();
    if three_w != 3 * width || items == 0 || rows % items != 0 {
        bail!("{name}: tokens {:?} and modulation {:?} do not fit", x.dims(), modulation.dims())
    }
    if params.dims1()? != inner.param_count() {
        bail!("{name}: {} packed parameters, expected {}", params.dims1()?, inner.param_count())
    }
    let op = Branch { inner, width, tokens: rows / items, eps: eps as f32, saved: Mutex::new(None) };
    x.contiguous()?.apply_op3(&modulation.contiguous()?, &params.contiguous()?, op)
}

/// What sits between a branch's modulated norm and its gate: rows `[R, W]` to rows `[R, W]`, with a backward.
trait Inner: Send + Sync + 'static {
    /// What the backward needs from the forward.
    type Saved: Send;

    fn name(&self) -> &'static str;

    /// Length of the packed parameters.
    fn param_count(&self) -> usize;

    /// The rows `xm` `[R, W]` to `[R, W]`.
    fn forward(&self, xm: &[f32], params: &[f32]) -> Result<(Vec<f32>, Self::Saved)>;

    /// The gradient `dy` of the output to (d xm, d params packed).
    fn backward(&self, saved: &Self::Saved, xm: &[f32], params: &[f32], dy: &[f32]) -> Result<(Vec<f32>, Vec<f32>)>;
}

/// A linear layer's part of the packed parameters: weight `[out, in]` and bias `[out]`.
struct Linear<'a> {
    weight: &'a [f32],
    bias: &'a [f32],
}

impl<'a> Linear<'a> {
    /// Two linear layers `(in1 → out1)`, `(in2 → out2)` packed as weight, bias, weight, bias ([`pack`]; the
    /// length was checked against the branch's parameter count).
    fn two(params: &'a [f32], (in1, out1): (usize, usize), (in2, out2): (usize, usize)) -> (Self, Self) {
        let (w1, rest) = params.split_at((out1 * in1).min(params.len()));
        let (b1, rest) = rest.split_at(out1.min(rest.len()));
        let (w2, rest) = rest.split_at((out2 * in2).min(rest.len()));
        let b2 = &rest[..out2.min(rest.len())];
        (Self { weight: w1, bias: b1 }, Self { weight: w2, bias: b2 })
    }

    fn forward(&self, x: &[f32], fan_in: usize) -> Result<Vec<f32>> {
        let (rows, fan_out) = (x.len() / fan_in.max(1), self.bias.len());
        matmul(Mat::rows(x, rows, fan_in), Mat::rows(self.weight, fan_out, fan_in).t(), Some(self.bias))
    }

    /// (dx, dw, db) of `x` `[R, in]` under the output gradient `g` `[R, out]`.
    fn backward(&self, x: &[f32], g: &[f32], fan_in: usize) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (rows, fan_out) = (x.len() / fan_in.max(1), self.bias.len());
        linear_backward(x, self.weight, g, (rows, fan_in, fan_out))
    }
}

/// Concatenates parameter gradients in packing order.
fn packed(parts: &[&[f32]]) -> Vec<f32> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    parts.iter().for_each(|p| out.extend_from_slice(p));
    out
}

/// fc1, GELU, fc2.
struct MlpInner {
    width: usize,
    hidden: usize,
}

impl Inner for MlpInner {
    /// fc1's output and gelu of it, `[R, H]` each.
    type Saved = (Vec<f32>, Vec<f32>);

    fn name(&self) -> &'static str {
        "wick-mlp-branch"
    }

    fn param_count(&self) -> usize {
        2 * self.hidden * self.width + self.hidden + self.width
    }

    fn forward(&self, xm: &[f32], params: &[f32]) -> Result<(Vec<f32>, Self::Saved)> {
        let (fc1, fc2) = Linear::two(params, (self.width, self.hidden), (self.hidden, self.width));
        let h = fc1.forward(xm, self.width)?;
        let a = gelu_values(&h);
        Ok((fc2.forward(&a, self.hidden)?, (h, a)))
    }

    fn backward(&self, saved: &Self::Saved, xm: &[f32], params: &[f32], dy: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let (fc1, fc2) = Linear::two(params, (self.width, self.hidden), (self.hidden, self.width));
        let (h, a) = saved;
        let (da, dw2, db2) = fc2.backward(a, dy, self.hidden)?;
        let dh = gelu_grad_values(h, &da);
        drop(da);
        let (dxm, dw1, db1) = fc1.backward(xm, &dh, self.width)?;
        Ok((dxm, packed(&[&dw1, &db1, &dw2, &db2])))
    }
}

/// qkv, self-attention, proj.
struct AttentionInner {
    width: usize,
    attention: SelfAttention,
}

impl Inner for AttentionInner {
    /// qkv's output `[R, 3W]` and the merged heads `[R, W]` (the attention keeps its own state).
    type Saved = Vec<f32>;

    fn name(&self) -> &'static str {
        "wick-attention-branch"
    }

    fn param_count(&self) -> usize {
        let w = self.width;
        3 * w * w + 3 * w + w * w + w
    }

    fn forward(&self, xm: &[f32], params: &[f32]) -> Result<(Vec<f32>, Self::Saved)> {
        let w = self.width;
        let rows = xm.len() / w.max(1);
        let (qkv, proj) = Linear::two(params, (w, 3 * w), (w, w));
        let heads = self.attention.forward_rows(&qkv.forward(xm, w)?, rows, 3 * w)?;
        Ok((proj.forward(&heads, w)?, heads))
    }

    fn backward(&self, heads: &Self::Saved, xm: &[f32], params: &[f32], dy: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let w = self.width;
        let rows = xm.len() / w.max(1);
        let (qkv, proj) = Linear::two(params, (w, 3 * w), (w, w));
        let (dheads, dw_proj, db_proj) = proj.backward(heads, dy, w)?;
        let dqkv = self.attention.backward_rows(&dheads, rows, 3 * w)?;
        drop(dheads);
        let (dxm, dw_qkv, db_qkv) = qkv.backward(xm, &dqkv, w)?;
        Ok((dxm, packed(&[&dw_qkv, &db_qkv, &dw_proj, &db_proj])))
    }
}

/// What a branch's backward needs from its forward.
struct BranchSaved<S> {
    /// The modulated norm of x `[R, W]`.
    xm: Vec<f32>,
    /// The inner output before the gate `[R, W]` (the gate's gradient needs it).
    y: Vec<f32>,
    inner: S,
}

/// A residual branch around `inner` (module doc): args x, modulation, packed params.
struct Branch<I: Inner> {
    inner: I,
    width: usize,
    /// Tokens per item.
    tokens: usize,
    eps: f32,
    saved: Mutex<Option<BranchSaved<I::Saved>>>,
}

impl<I: Inner> Branch<I> {
    /// The columns `part` (0 shift, 1 scale, 2 gate) of the modulation, as `[B, W]`.
    fn modulation_part(&self, modulation: &[f32], part: usize) -> Vec<f32> {
        let w = self.width;
        modulation.chunks_exact(3 * w).flat_map(|row| row[part * w..(part + 1) * w].iter().copied()).collect()
    }
}

impl<I: Inner> CustomOp3 for Branch<I> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, modulation, params) =
            (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let (w, n) = (self.width, self.tokens);
        let (shift, scale, gate) = (
            self.modulation_part(modulation, 0),
            self.modulation_part(modulation, 1),
            self.modulation_part(modulation, 2),
        );
        let xm = ln_forward(x, w, n, Some((&shift, &scale)), self.eps);
        let (y, inner) = self.inner.forward(&xm, params)?;
        let out = gated_residual_rows(x, &y, &gate, n, w);
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(BranchSaved { xm, y, inner });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        modulation: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let guard = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let Some(saved) = guard.as_ref() else { bail!("{name}: backward without a forward") };
        let (w, n) = (self.width, self.tokens);
        let (dx, dmod, dparams) = with_data(x, name, |x| {
            with_data(modulation, name, |modulation| {
                with_data(params, name, |params| {
                    with_data(grad, name, |g| {
                        let items = x.len() / (w * n).max(1);
                        let (scale, gate) = (self.modulation_part(modulation, 1), self.modulation_part(modulation, 2));
                        // Gated residual: dy = g · gate, dgate = Σ g · y per item.
                        let mut dy = vec![0f32; x.len()];
                        let mut dgate = vec![0f32; items * w];
                        for item in 0..items {
                            let (gt, dg) = (&gate[item * w..(item + 1) * w], &mut dgate[item * w..(item + 1) * w]);
                            for r in item * n..(item + 1) * n {
                                let at = r * w..(r + 1) * w;
                                let (gr, yr, dyr) = (&g[at.clone()], &saved.y[at.clone()], &mut dy[at]);
                                for j in 0..w {
                                    dyr[j] = gr[j] * gt[j];
                                    dg[j] += gr[j] * yr[j];
                                }
                            }
                        }
                        let (dxm, dparams) = self.inner.backward(&saved.inner, &saved.xm, params, &dy)?;
                        drop(dy);
                        // LayerNorm + modulation, then the residual's own path.
                        let (mut dx, mods) = ln_backward(x, &dxm, w, n, Some(&scale), self.eps);
                        let Some((dshift, dscale)) = mods else { bail!("{name}: modulation gradients missing") };
                        dx.iter_mut().zip(g).for_each(|(d, gv)| *d += gv);
                        let mut dmod = Vec::with_capacity(items * 3 * w);
                        for item in 0..items {
                            let at = item * w..(item + 1) * w;
                            dmod.extend_from_slice(&dshift[at.clone()]);
                            dmod.extend_from_slice(&dscale[at.clone()]);
                            dmod.extend_from_slice(&dgate[at]);
                        }
                        Ok((dx, dmod, dparams))
                    })
                })
            })
        })?;
        Ok((
            Some(cpu_tensor(dx, x.shape())?),
            Some(cpu_tensor(dmod, modulation.shape())?),
            Some(cpu_tensor(dparams, params.shape())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::model::cpu::with_reference_ops;
    use crate::model::{attention, ops};

    /// The branch around `inner` as separate ops (the basic-op versions under `with_reference_ops`).
    fn separate(x: &Tensor, modulation: &Tensor, inner: impl Fn(&Tensor) -> Tensor) -> Tensor {
        let w = x.dim(1).unwrap();
        let part = |i: usize| modulation.narrow(1, i * w, w).unwrap().contiguous().unwrap();
        let xm = ops::layer_norm_modulate(x, &part(0), &part(1), 1e-6).unwrap();
        ops::gated_residual(x, &inner(&xm), &part(2)).unwrap()
    }

    /// Checks a fused branch against its separate ops: value, and the gradients of x, the modulation and the
    /// two linear layers `(in1 → out1)`, `(in2 → out2)`.
    fn check_branch(
        name: &str,
        (in1, out1): (usize, usize),
        (in2, out2): (usize, usize),
        fused: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor,
        inner: impl Fn(&Tensor, [&Tensor; 4]) -> Tensor,
    ) {
        let dev = Device::Cpu;
        let (items, tokens, w) = (3, 5, in1);
        let var = |shape: &[usize], seed: f32| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| ((i as f32 + seed) * 0.731).sin() * 0.8).collect();
            Var::from_tensor(&Tensor::from_vec(data, shape, &dev).unwrap()).unwrap()
        };
        let x = var(&[items * tokens, w], 1.0);
        let modulation = var(&[items, 3 * w], 2.0);
        let (w1, b1, w2, b2) = (var(&[out1, in1], 3.0), var(&[out1], 4.0), var(&[out2, in2], 5.0), var(&[out2], 6.0));
        let params = [w1.as_tensor(), b1.as_tensor(), w2.as_tensor(), b2.as_tensor()];
        let weights: Vec<f32> = (0..items * tokens * w).map(|i| (i as f32 * 0.3).cos()).collect();
        let weights = Tensor::from_vec(weights, (items * tokens, w), &dev).unwrap();
        let loss = |out: &Tensor| (out * &weights).unwrap().sum_all().unwrap();
        let out = fused(x.as_tensor(), modulation.as_tensor(), &pack(&params).unwrap());
        let g_fused = loss(&out).backward().unwrap();
        let reference = with_reference_ops(|| separate(x.as_tensor(), modulation.as_tensor(), |xm| inner(xm, params)));
        let g_ref = with_reference_ops(|| loss(&reference).backward().unwrap());
        let max_diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(max_diff(&out, &reference) < 1e-5, "{name}: values differ by {}", max_diff(&out, &reference));
        for (part, v) in [("x", &x), ("modulation", &modulation), ("w1", &w1), ("b1", &b1), ("w2", &w2), ("b2", &b2)] {
            let (a, b) = (g_fused.get(v.as_tensor()).unwrap(), g_ref.get(v.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-4, "{name}: gradient of {part} differs by {}", max_diff(a, b));
        }
    }

    #[test]
    fn the_fused_mlp_branch_matches_its_separate_ops_in_value_and_every_gradient() {
        let (w, hd) = (8, 12);
        check_branch(
            "mlp",
            (w, hd),
            (hd, w),
            |x, m, p| mlp_branch(x, m, p, hd, 1e-6).unwrap(),
            |xm, [w1, b1, w2, b2]| {
                ops::linear(&ops::gelu_tanh(&ops::linear(xm, w1, b1).unwrap()).unwrap(), w2, b2).unwrap()
            },
        );
    }

    #[test]
    fn the_fused_attention_branch_matches_its_separate_ops_in_value_and_every_gradient() {
        let (w, heads, items) = (8, 2, 3);
        check_branch(
            "attention",
            (w, 3 * w),
            (w, w),
            |x, m, p| attention_branch(x, m, p, heads, 1e-6).unwrap(),
            |xm, [wq, bq, wp, bp]| {
                let qkv = ops::linear(xm, wq, bq).unwrap();
                ops::linear(&attention::self_attention(&qkv, items, heads).unwrap(), wp, bp).unwrap()
            },
        );
    }
}
