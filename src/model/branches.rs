//! Whole residual branches of a DiT block as one graph node each, on the CPU.
//!
//! Every node of candle's graph costs its backward a zero-filled gradient buffer and an add per input, and
//! every matmul a zero-filled output: on this model's small matrices that was a fifth of a training step.
//! A fused branch keeps its intermediates to itself and computes its backward with [`super::matmul`] into
//! buffers written once. Its parameters enter as one packed vector (a concatenation: cheap, and its backward
//! hands each parameter its part).
//!
//! The MLP branch: `x + gate · fc2(gelu(fc1(layer_norm(x) · (1 + scale) + shift)))` with `(shift, scale,
//! gate)` of each item from adaLN. Off the CPU, and in tests as the oracle, the same maths runs as the
//! separate ops of [`super::ops`] ([`super::layers`]).

use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

use super::cpu::{cpu_tensor, slice, with_data};
use super::matmul::{matmul, Mat};
use super::ops::{column_sums, gated_residual_rows, gelu_grad_values, gelu_values, ln_backward, ln_forward};

/// The parameters of a branch in one vector: each flattened, in order.
pub(crate) fn pack(params: &[&Tensor]) -> Result<Tensor> {
    let flat = params.iter().map(|p| p.flatten_all()).collect::<Result<Vec<_>>>()?;
    Tensor::cat(&flat, 0)
}

/// The fused MLP branch (module doc): x `[B·N, W]`, modulation `[B, 3W]` (shift, scale, gate of each item
/// side by side), params = [`pack`] of fc1 weight `[H, W]`, fc1 bias `[H]`, fc2 weight `[W, H]`, fc2 bias
/// `[W]`. Returns `[B·N, W]`.
pub(crate) fn mlp_branch(x: &Tensor, modulation: &Tensor, params: &Tensor, hidden: usize, eps: f64) -> Result<Tensor> {
    let (rows, width) = x.dims2()?;
    let (items, three_w) = modulation.dims2()?;
    if three_w != 3 * width || items == 0 || rows % items != 0 {
        bail!("mlp branch: tokens {:?} and modulation {:?} do not fit", x.dims(), modulation.dims())
    }
    let expected = 2 * hidden * width + hidden + width;
    if params.dims1()? != expected {
        bail!("mlp branch: {} packed parameters, expected {expected}", params.dims1()?)
    }
    let op = MlpBranch { width, hidden, tokens: rows / items, eps: eps as f32, saved: Mutex::new(None) };
    x.contiguous()?.apply_op3(&modulation.contiguous()?, &params.contiguous()?, op)
}

/// What the MLP branch's backward needs from its forward.
struct MlpSaved {
    /// The modulated norm of x, fc1's input `[R, W]`.
    xm: Vec<f32>,
    /// fc1's output `[R, H]`.
    h: Vec<f32>,
    /// gelu(h), fc2's input `[R, H]`.
    a: Vec<f32>,
    /// fc2's output `[R, W]` (the gate's gradient needs it).
    y: Vec<f32>,
}

struct MlpBranch {
    width: usize,
    hidden: usize,
    /// Tokens per item.
    tokens: usize,
    eps: f32,
    saved: Mutex<Option<MlpSaved>>,
}

/// The packed parameters of the MLP branch, split.
struct MlpParams<'a> {
    w1: &'a [f32],
    b1: &'a [f32],
    w2: &'a [f32],
    b2: &'a [f32],
}

impl MlpBranch {
    fn split<'a>(&self, p: &'a [f32]) -> MlpParams<'a> {
        let (w, h) = (self.width, self.hidden);
        let (w1, rest) = p.split_at(h * w);
        let (b1, rest) = rest.split_at(h);
        let (w2, b2) = rest.split_at(w * h);
        MlpParams { w1, b1, w2, b2 }
    }

    /// The columns `part` (0 shift, 1 scale, 2 gate) of the modulation, as `[B, W]`.
    fn modulation_part(&self, modulation: &[f32], part: usize) -> Vec<f32> {
        let w = self.width;
        modulation.chunks_exact(3 * w).flat_map(|row| row[part * w..(part + 1) * w].iter().copied()).collect()
    }
}

impl CustomOp3 for MlpBranch {
    fn name(&self) -> &'static str {
        "wick-mlp-branch"
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
        let (w, hd, n) = (self.width, self.hidden, self.tokens);
        let rows = x.len() / w;
        let p = self.split(params);
        let (shift, scale, gate) = (
            self.modulation_part(modulation, 0),
            self.modulation_part(modulation, 1),
            self.modulation_part(modulation, 2),
        );
        let xm = ln_forward(x, w, n, Some((&shift, &scale)), self.eps);
        let h = matmul(Mat::rows(&xm, rows, w), Mat::rows(p.w1, hd, w).t(), Some(p.b1))?;
        let a = gelu_values(&h);
        let y = matmul(Mat::rows(&a, rows, hd), Mat::rows(p.w2, w, hd).t(), Some(p.b2))?;
        let out = gated_residual_rows(x, &y, &gate, n, w);
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(MlpSaved { xm, h, a, y });
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
        let (w, hd, n) = (self.width, self.hidden, self.tokens);
        let (dx, dmod, dparams) = with_data(x, name, |x| {
            with_data(modulation, name, |modulation| {
                with_data(params, name, |params| {
                    with_data(grad, name, |g| {
                        let rows = x.len() / w;
                        let items = rows / n.max(1);
                        let p = self.split(params);
                        let (scale, gate) = (self.modulation_part(modulation, 1), self.modulation_part(modulation, 2));
                        // Gated residual: dy = g · gate, dgate = Σ g · y per item.
                        let mut dy = vec![0f32; rows * w];
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
                        // fc2.
                        let da = matmul(Mat::rows(&dy, rows, w), Mat::rows(p.w2, w, hd), None)?;
                        let dw2 = matmul(Mat::rows(&dy, rows, w).t(), Mat::rows(&saved.a, rows, hd), None)?;
                        let db2 = column_sums(&dy, w);
                        // GELU, fc1.
                        let dh = gelu_grad_values(&saved.h, &da);
                        drop(da);
                        let dw1 = matmul(Mat::rows(&dh, rows, hd).t(), Mat::rows(&saved.xm, rows, w), None)?;
                        let db1 = column_sums(&dh, hd);
                        let dxm = matmul(Mat::rows(&dh, rows, hd), Mat::rows(p.w1, hd, w), None)?;
                        drop(dh);
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
                        let mut dparams = Vec::with_capacity(params.len());
                        for part in [&dw1, &db1, &dw2, &db2] {
                            dparams.extend_from_slice(part);
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
    use crate::model::ops;

    /// The branch as separate ops (the basic-op versions under `with_reference_ops`).
    fn separate(x: &Tensor, modulation: &Tensor, w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor) -> Tensor {
        let w = x.dim(1).unwrap();
        let part = |i: usize| modulation.narrow(1, i * w, w).unwrap().contiguous().unwrap();
        let xm = ops::layer_norm_modulate(x, &part(0), &part(1), 1e-6).unwrap();
        let h = ops::linear(&xm, w1, b1).unwrap();
        let y = ops::linear(&ops::gelu_tanh(&h).unwrap(), w2, b2).unwrap();
        ops::gated_residual(x, &y, &part(2)).unwrap()
    }

    #[test]
    fn the_fused_mlp_branch_matches_its_separate_ops_in_value_and_every_gradient() {
        let dev = Device::Cpu;
        let (items, tokens, w, hd) = (3, 5, 8, 12);
        let var = |shape: &[usize], seed: f32| {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|i| ((i as f32 + seed) * 0.731).sin() * 0.8).collect();
            Var::from_tensor(&Tensor::from_vec(data, shape, &dev).unwrap()).unwrap()
        };
        let x = var(&[items * tokens, w], 1.0);
        let modulation = var(&[items, 3 * w], 2.0);
        let (w1, b1, w2, b2) = (var(&[hd, w], 3.0), var(&[hd], 4.0), var(&[w, hd], 5.0), var(&[w], 6.0));
        let weights = Tensor::from_vec(
            (0..items * tokens * w).map(|i| (i as f32 * 0.3).cos()).collect(),
            (items * tokens, w),
            &dev,
        )
        .unwrap();
        let loss = |out: &Tensor| (out * &weights).unwrap().sum_all().unwrap();
        let params = pack(&[w1.as_tensor(), b1.as_tensor(), w2.as_tensor(), b2.as_tensor()]).unwrap();
        let fused = mlp_branch(x.as_tensor(), modulation.as_tensor(), &params, hd, 1e-6).unwrap();
        let g_fused = loss(&fused).backward().unwrap();
        let reference = with_reference_ops(|| {
            separate(
                x.as_tensor(),
                modulation.as_tensor(),
                w1.as_tensor(),
                b1.as_tensor(),
                w2.as_tensor(),
                b2.as_tensor(),
            )
        });
        let g_ref = with_reference_ops(|| loss(&reference).backward().unwrap());
        let max_diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(max_diff(&fused, &reference) < 1e-5, "values differ by {}", max_diff(&fused, &reference));
        for (name, v) in [("x", &x), ("modulation", &modulation), ("w1", &w1), ("b1", &b1), ("w2", &w2), ("b2", &b2)] {
            let (a, b) = (g_fused.get(v.as_tensor()).unwrap(), g_ref.get(v.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-4, "gradient of {name} differs by {}", max_diff(a, b));
        }
    }
}
