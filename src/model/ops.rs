//! Differentiable ops of the denoiser that candle lacks or runs slowly on the CPU.
//!
//! candle's own `LayerNorm`, `RmsNorm` and `softmax_last_dim` have no backward; composing them from basic ops
//! works but costs many full passes over memory, and candle's backward of broadcasts (bias adds, adaLN
//! modulation) goes through a slow strided reduction. So on the CPU each op here is one fused custom op whose
//! forward and backward are single parallel passes (on candle's barrier thread pool); on other devices the
//! same maths runs as basic candle ops ([`reference`](mod@reference)). Unit tests check values and gradients of both paths
//! against each other.
//!
//! All fused ops take and return f32; inputs are made contiguous first (free when they already are). The
//! fused attention lives in [`super::attention`].

use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::cpu::{
    buffer, check_dims, cpu_tensor, dot8, fused, multiversion, par_fill1, par_items, slice, sq_dev8, sum8, with_data,
};
use super::matmul::{matmul, Mat};

/// `sqrt(2 / pi)`, as candle's `gelu` uses it.
const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
/// Cubic coefficient of the tanh approximation of GELU.
const GELU_CUBIC: f32 = 0.044715;

/// Parameter-free LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps)`, biased variance.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    if !fused(x) {
        return reference::layer_norm(x, eps);
    }
    x.contiguous()?.apply_op1(LayerNorm { eps: eps as f32 })
}

/// `layer_norm(x) * (1 + scale[b]) + shift[b]` for the tokens x of B items, `[B, N, C]` or `[B·N, C]`, with
/// shift and scale `[B, C]` (DiT's adaLN modulation fused with the norm).
pub fn layer_norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    let (b, n, c) = token_dims("layer_norm_modulate", x, shift)?;
    check_dims("layer_norm_modulate scale", scale, &[b, c])?;
    if !fused(x) {
        let y = reference::modulate(&reference::layer_norm(&x.reshape((b, n, c))?, eps)?, shift, scale)?;
        return y.reshape(x.dims());
    }
    let op = LayerNormModulate { eps: eps as f32, n };
    x.contiguous()?.apply_op3(&shift.contiguous()?, &scale.contiguous()?, op)
}

/// Gated residual `x + a * gate[b]` for the tokens x and a of B items, `[B, N, C]` or `[B·N, C]`, with gate
/// `[B, C]` (adaLN-Zero's gates).
pub fn gated_residual(x: &Tensor, a: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let (b, n, c) = token_dims("gated_residual", x, gate)?;
    check_dims("gated_residual a", a, x.dims())?;
    if !fused(x) {
        let y = (x.reshape((b, n, c))? + a.reshape((b, n, c))?.broadcast_mul(&gate.unsqueeze(1)?)?)?;
        return y.reshape(x.dims());
    }
    x.contiguous()?.apply_op3(&a.contiguous()?, &gate.contiguous()?, GatedResidual { n })
}

/// `(B, N, C)` of tokens x (`[B, N, C]` or `[B·N, C]`) whose per-item tensor is `[B, C]`.
fn token_dims(op: &str, x: &Tensor, per_item: &Tensor) -> Result<(usize, usize, usize)> {
    let c = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / c.max(1);
    let b = per_item.dim(0)?;
    check_dims(&format!("{op} per-item input"), per_item, &[b, c])?;
    if b == 0 || rows % b != 0 || (x.rank() == 3 && x.dim(0)? != b) {
        bail!("{op}: tokens {:?} do not split into {b} items", x.dims())
    }
    Ok((b, rows / b, c))
}

/// GELU with the tanh approximation (PyTorch's `GELU(approximate="tanh")`, candle's `gelu`, not `gelu_erf`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if !fused(x) {
        return x.gelu();
    }
    x.contiguous()?.apply_op1(Gelu)
}

/// The same maths as basic candle ops (every one with a backward): used off the CPU and as the test oracle.
pub mod reference {
    use candle_core::{Result, Tensor, D};

    /// LayerNorm over the last dimension without affine parameters.
    pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred.broadcast_div(&(var + eps)?.sqrt()?)
    }

    /// `x * (1 + scale[:, None]) + shift[:, None]`.
    pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&(scale + 1.0)?.unsqueeze(1)?)?.broadcast_add(&shift.unsqueeze(1)?)
    }

    /// Softmax over the last dimension (`candle_nn::ops::softmax`, which has a backward).
    pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

// ---------------------------------------------------------------------------------------------------------
// LayerNorm (plain and modulated).

/// Mean and `1/sqrt(var + eps)` of one row.
#[inline(always)]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = sum8(row) / n;
    let var = sq_dev8(row, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Forward of LayerNorm (+ modulation) over rows of `c` values; `rows_per_item` rows share one (shift, scale).
pub(crate) fn ln_forward(
    x: &[f32],
    c: usize,
    rows_per_item: usize,
    modulation: Option<(&[f32], &[f32])>,
    eps: f32,
) -> Vec<f32> {
    par_fill1(x.len(), c * rows_per_item, |range, dst| {
        ln_forward_chunk(x, c, rows_per_item, modulation, eps, range, dst)
    })
}

multiversion! {
    /// [`ln_forward`] of the items `range` into `dst`.
    fn ln_forward_chunk(
        x: &[f32],
        c: usize,
        rows_per_item: usize,
        modulation: Option<(&[f32], &[f32])>,
        eps: f32,
        range: Range<usize>,
        dst: &mut [MaybeUninit<f32>],
    ) {
        for (i, item) in range.enumerate() {
            let base = item * rows_per_item * c;
            for r in 0..rows_per_item {
                let row = &x[base + r * c..base + (r + 1) * c];
                let o = &mut dst[(i * rows_per_item + r) * c..(i * rows_per_item + r + 1) * c];
                let (mean, rstd) = row_stats(row, eps);
                match modulation {
                    None => o.iter_mut().zip(row).for_each(|(o, v)| {
                        o.write((v - mean) * rstd);
                    }),
                    Some((shift, scale)) => {
                        let (shift, scale) = (&shift[item * c..(item + 1) * c], &scale[item * c..(item + 1) * c]);
                        for (((o, v), s), sh) in o.iter_mut().zip(row).zip(scale).zip(shift) {
                            o.write(((v - mean) * rstd) * (1.0 + s) + sh);
                        }
                    }
                }
            }
        }
    }
}

/// Gradients of the modulation: (d_shift, d_scale), each `[B, C]`.
type ModulationGrads = (Vec<f32>, Vec<f32>);

/// Backward of LayerNorm (+ modulation). Returns dx and, with modulation, (d_shift, d_scale).
pub(crate) fn ln_backward(
    x: &[f32],
    g: &[f32],
    c: usize,
    rows_per_item: usize,
    scale: Option<&[f32]>,
    eps: f32,
) -> (Vec<f32>, Option<ModulationGrads>) {
    let items = x.len() / (c * rows_per_item);
    let mut dx = buffer(x.len());
    let (mut d_shift, mut d_scale) = match scale {
        Some(_) => (buffer(items * c), buffer(items * c)),
        None => (Vec::new(), Vec::new()),
    };
    let mut outputs = vec![(dx.as_mut_slice(), c * rows_per_item)];
    if scale.is_some() {
        outputs.push((d_shift.as_mut_slice(), c));
        outputs.push((d_scale.as_mut_slice(), c));
    }
    par_items(items, outputs, |range, outs| ln_backward_chunk(x, g, c, rows_per_item, scale, eps, range, outs));
    let mods = scale.map(|_| (d_shift, d_scale));
    (dx, mods)
}

multiversion! {
    /// [`ln_backward`] of the items `range`: outputs dx (and d_shift, d_scale with modulation).
    fn ln_backward_chunk(
        x: &[f32],
        g: &[f32],
        c: usize,
        rows_per_item: usize,
        scale: Option<&[f32]>,
        eps: f32,
        range: Range<usize>,
        outs: &mut [&mut [f32]],
    ) {
        let (d_out, mut mods) = match outs {
            [d] => (d, None),
            [d, ds, dsc] => (d, Some((ds, dsc))),
            _ => return,
        };
        let mut xhat = vec![0f32; c];
        let mut gh = vec![0f32; c];
        for (i, item) in range.enumerate() {
            for r in 0..rows_per_item {
                let at = (item * rows_per_item + r) * c;
                let (row, grow) = (&x[at..at + c], &g[at..at + c]);
                let (mean, rstd) = row_stats(row, eps);
                xhat.iter_mut().zip(row).for_each(|(h, v)| *h = (v - mean) * rstd);
                match (scale, mods.as_mut()) {
                    (Some(scale), Some((ds, dsc))) => {
                        let scale = &scale[item * c..(item + 1) * c];
                        let (ds, dsc) = (&mut ds[i * c..(i + 1) * c], &mut dsc[i * c..(i + 1) * c]);
                        for j in 0..c {
                            ds[j] += grow[j];
                            dsc[j] += grow[j] * xhat[j];
                            gh[j] = grow[j] * (1.0 + scale[j]);
                        }
                    }
                    _ => gh.copy_from_slice(grow),
                }
                let m1 = sum8(&gh) / c as f32;
                let m2 = dot8(&gh, &xhat) / c as f32;
                let d = &mut d_out[(i * rows_per_item + r) * c..(i * rows_per_item + r + 1) * c];
                for ((d, gv), hv) in d.iter_mut().zip(&gh).zip(&xhat) {
                    *d = rstd * (gv - m1 - hv * m2);
                }
            }
        }
    }
}

/// Fused parameter-free LayerNorm over the last dimension.
struct LayerNorm {
    eps: f32,
}

impl CustomOp1 for LayerNorm {
    fn name(&self) -> &'static str {
        "wick-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let c = l.dims().last().copied().unwrap_or(1);
        Ok((CpuStorage::F32(ln_forward(x, c, 1, None, self.eps)), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let c = arg.dim(candle_core::D::Minus1)?;
        let dx = with_data(arg, self.name(), |x| {
            with_data(grad, self.name(), |g| Ok(ln_backward(x, g, c, 1, None, self.eps).0))
        })?;
        Ok(Some(cpu_tensor(dx, arg.shape())?))
    }
}

/// Fused LayerNorm + adaLN modulation: args x `[B, N, C]`, shift `[B, C]`, scale `[B, C]`.
struct LayerNormModulate {
    eps: f32,
    /// Tokens per item.
    n: usize,
}

impl CustomOp3 for LayerNormModulate {
    fn name(&self) -> &'static str {
        "wick-layer-norm-modulate"
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
        let (x, shift, scale) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let c = l2.dims().last().copied().unwrap_or(1);
        Ok((CpuStorage::F32(ln_forward(x, c, self.n, Some((shift, scale)), self.eps)), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c) = (self.n, shift.dim(1)?);
        let name = self.name();
        let (dx, mods) = with_data(x, name, |xd| {
            with_data(grad, name, |g| with_data(scale, name, |sc| Ok(ln_backward(xd, g, c, n, Some(sc), self.eps))))
        })?;
        let Some((d_shift, d_scale)) = mods else { bail!("{name}: modulation gradients missing") };
        Ok((
            Some(cpu_tensor(dx, x.shape())?),
            Some(cpu_tensor(d_shift, shift.shape())?),
            Some(cpu_tensor(d_scale, scale.shape())?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Gated residual, bias add.

/// `x + a * gate[b]`: args x, a `[B·N, C]` (or 3-D), gate `[B, C]`.
struct GatedResidual {
    /// Tokens per item.
    n: usize,
}

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "wick-gated-residual"
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
        let (x, a, gate) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let (_, c) = l3.shape().dims2()?;
        Ok((CpuStorage::F32(gated_residual_rows(x, a, gate, self.n, c)), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        a: &Tensor,
        gate: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let ((b, c), n) = (gate.dims2()?, self.n);
        let name = self.name();
        let (da, dgate) = with_data(a, name, |ad| {
            with_data(grad, name, |g| {
                with_data(gate, name, |gt| {
                    let mut da = buffer(ad.len());
                    let mut dgate = buffer(b * c);
                    par_items(b, vec![(&mut da, n * c), (&mut dgate, c)], |range, outs| {
                        for (i, item) in range.clone().enumerate() {
                            let gt = &gt[item * c..(item + 1) * c];
                            for r in 0..n {
                                let at = (item * n + r) * c;
                                let (dst, rest) = outs.split_at_mut(1);
                                let da = &mut dst[0][(i * n + r) * c..(i * n + r + 1) * c];
                                let dg = &mut rest[0][i * c..(i + 1) * c];
                                for j in 0..c {
                                    da[j] = g[at + j] * gt[j];
                                    dg[j] += g[at + j] * ad[at + j];
                                }
                            }
                        }
                    });
                    Ok((da, dgate))
                })
            })
        })?;
        Ok((Some(grad.clone()), Some(cpu_tensor(da, a.shape())?), Some(cpu_tensor(dgate, gate.shape())?)))
    }
}

/// `x + a · gate[item]` over the rows of `c` values of items of `n` rows each.
pub(crate) fn gated_residual_rows(x: &[f32], a: &[f32], gate: &[f32], n: usize, c: usize) -> Vec<f32> {
    par_fill1(x.len(), n * c, |range, out| {
        for (i, item) in range.clone().enumerate() {
            let gate = &gate[item * c..(item + 1) * c];
            for r in 0..n {
                let at = (item * n + r) * c;
                let o = &mut out[(i * n + r) * c..(i * n + r + 1) * c];
                for (((o, xv), av), gv) in o.iter_mut().zip(&x[at..at + c]).zip(&a[at..at + c]).zip(gate) {
                    o.write(xv + av * gv);
                }
            }
        }
    })
}

/// Column sums of rows of `c` values (the gradient of a bias).
pub(crate) fn column_sums(rows: &[f32], c: usize) -> Vec<f32> {
    let mut sums = buffer(c);
    for row in rows.chunks_exact(c.max(1)) {
        sums.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
    sums
}

/// `(dx, dw, db)` of a linear layer `x wᵀ + b` with x `[rows, fan_in]` and weight `[fan_out, fan_in]`, under
/// the output gradient `g` `[rows, fan_out]`.
pub(crate) fn linear_backward(
    x: &[f32],
    weight: &[f32],
    g: &[f32],
    (rows, fan_in, fan_out): (usize, usize, usize),
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let g_rows = Mat::rows(g, rows, fan_out);
    let dx = matmul(g_rows, Mat::rows(weight, fan_out, fan_in), None)?;
    let dw = matmul(g_rows.t(), Mat::rows(x, rows, fan_in), None)?;
    Ok((dx, dw, column_sums(g, fan_out)))
}

/// `nn.Linear` on rows: `x wᵀ + b` for x `[R, in]`, weight `[out, in]`, bias `[out]`, as one graph node.
///
/// On the CPU the forward is one product starting from the bias ([`super::matmul`]) and the backward computes
/// `dx = g w`, `dw = gᵀ x`, `db = Σ g` into buffers written once.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (_, fan_in) = x.dims2()?;
    let (fan_out, w_in) = weight.dims2()?;
    if w_in != fan_in {
        bail!("linear: input {:?} does not fit weight {:?}", x.dims(), weight.dims())
    }
    check_dims("linear bias", bias, &[fan_out])?;
    if !fused(x) {
        return x.matmul(&weight.t()?)?.broadcast_add(bias);
    }
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, Linear)
}

/// See [`linear`].
struct Linear;

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "wick-linear"
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
        let (x, weight, bias) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let ((rows, fan_in), (fan_out, _)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        let out = matmul(Mat::rows(x, rows, fan_in), Mat::rows(weight, fan_out, fan_in).t(), Some(bias))?;
        Ok((CpuStorage::F32(out), Shape::from((rows, fan_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let ((rows, fan_in), (fan_out, _)) = (x.dims2()?, weight.dims2()?);
        let (dx, dw, db) = with_data(x, name, |xd| {
            with_data(weight, name, |wd| with_data(grad, name, |g| linear_backward(xd, wd, g, (rows, fan_in, fan_out))))
        })?;
        Ok((
            Some(cpu_tensor(dx, x.shape())?),
            Some(cpu_tensor(dw, weight.shape())?),
            Some(cpu_tensor(db, bias.shape())?),
        ))
    }
}

// ---------------------------------------------------------------------------------------------------------
// GELU (tanh approximation).

/// `exp(x)` for x in [-87, 88] (clamped there; Cephes `expf`: range reduction by ln 2 and a degree-7
/// polynomial, ~1 ulp), written without calls or branches so that loops over it vectorise. NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
    // Round x·log2(e) to the nearest integer n with the 1.5·2²³ trick: after the add, n sits in the low
    // mantissa bits (no float-to-int conversion, whose saturating semantics cost extra instructions).
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let z = x * std::f32::consts::LOG2_E + SHIFTER;
    let nf = z - SHIFTER;
    let n = z.to_bits().wrapping_sub(SHIFTER.to_bits()) as i32;
    let r = x - nf * 0.693_359_4 - nf * -2.121_944_4e-4;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5)
        * r
        * r
        + r
        + 1.0;
    p * f32::from_bits(((n + 127) as u32) << 23)
}

/// `0.5 (1 + tanh(u)) = sigmoid(2u)` for GELU's `u = sqrt(2/π) (v + 0.044715 v³)`: one exp and one division,
/// and accurate in both tails (no `1 + tanh` cancellation).
#[inline(always)]
fn gelu_gate(v: f32) -> f32 {
    let u = SQRT_TWO_OVER_PI * v * (1.0 + GELU_CUBIC * v * v);
    1.0 / (1.0 + exp_fast(-2.0 * u))
}

/// GELU, tanh approximation: `v · sigmoid(2u)` (equal to `0.5 v (1 + tanh(u))`).
#[inline(always)]
fn gelu_value(v: f32) -> f32 {
    v * gelu_gate(v)
}

/// Derivative of [`gelu_value`]: `s + 2 v s (1 - s) u'(v)` with `s = sigmoid(2u)`.
#[inline(always)]
fn gelu_derivative(v: f32) -> f32 {
    let s = gelu_gate(v);
    s + 2.0 * v * s * (1.0 - s) * SQRT_TWO_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * v * v)
}

/// Elementwise map in parallel blocks.
fn par_map(x: &[f32], f: impl Fn(&[f32], &mut [MaybeUninit<f32>]) + Sync) -> Vec<f32> {
    const BLOCK: usize = 4096;
    par_fill1(x.len(), BLOCK, |range, out| f(&x[range.start * BLOCK..(range.end * BLOCK).min(x.len())], out))
}

/// Defines `$name(src.., dst)` applying an `#[inline(always)]` scalar body elementwise, compiled three times:
/// for AVX-512 and AVX2 (chosen at run time, [`super::cpu::simd_path`]) and for the baseline target. The crate
/// builds for baseline x86-64 (SSE2), where these loops do not vectorise; the AVX2 copy runs about 8 lanes
/// wide, the AVX-512 one 16. All copies perform the same IEEE operations (Rust never contracts a multiply and
/// add into an FMA), so their results are identical.
macro_rules! elementwise {
    ($(#[$doc:meta])* $name:ident($($src:ident),+) => |$($v:ident),+| $body:expr) => {
        $(#[$doc])*
        fn $name($($src: &[f32],)+ dst: &mut [MaybeUninit<f32>]) {
            #[inline(always)]
            fn body($($v: f32),+) -> f32 {
                $body
            }
            #[inline(always)]
            fn run($($src: &[f32],)+ dst: &mut [MaybeUninit<f32>]) {
                let n = dst.len();
                $(let $src = &$src[..n];)+ // equal lengths: no bounds checks in the loop
                for i in 0..n {
                    dst[i].write(body($($src[i]),+));
                }
            }
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                unsafe fn run_avx512($($src: &[f32],)+ dst: &mut [MaybeUninit<f32>]) {
                    run($($src,)+ dst)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn run_avx2($($src: &[f32],)+ dst: &mut [MaybeUninit<f32>]) {
                    run($($src,)+ dst)
                }
                match super::cpu::simd_path() {
                    // SAFETY: simd_path only names a path whose features the CPU has (runtime detection).
                    super::cpu::SimdPath::Avx512 => return unsafe { run_avx512($($src,)+ dst) },
                    // SAFETY: as above, AVX2 and FMA.
                    super::cpu::SimdPath::Avx2 => return unsafe { run_avx2($($src,)+ dst) },
                    super::cpu::SimdPath::Baseline => {}
                }
            }
            run($($src,)+ dst)
        }
    };
}

elementwise!(
    /// `dst = gelu(x)`.
    gelu_slice(x) => |v| gelu_value(v)
);

elementwise!(
    /// `dst = g * gelu'(x)`.
    gelu_grad_slice(x, g) => |v, gv| gv * gelu_derivative(v)
);

/// `gelu(x)` elementwise (tanh approximation).
pub(crate) fn gelu_values(x: &[f32]) -> Vec<f32> {
    par_map(x, gelu_slice)
}

/// `g · gelu'(x)` elementwise; `x` and `g` have the same length.
pub(crate) fn gelu_grad_values(x: &[f32], g: &[f32]) -> Vec<f32> {
    const BLOCK: usize = 4096;
    par_fill1(x.len(), BLOCK, |range, out| {
        let end = (range.end * BLOCK).min(x.len());
        gelu_grad_slice(&x[range.start * BLOCK..end], &g[range.start * BLOCK..end], out);
    })
}

struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "wick-gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        Ok((CpuStorage::F32(gelu_values(x)), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &GeluGrad)?))
    }
}

/// `grad * gelu'(x)`: args x, grad (same shape).
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "wick-gelu-tanh-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        if x.len() != g.len() {
            bail!("{}: x and grad differ in size", self.name())
        }
        Ok((CpuStorage::F32(gelu_grad_values(x, g)), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Softmax over the last dimension, with the logit scale (and an optional per-batch bias) fused in.

/// Softmax of `x * scale (+ bias)` into `o`, one row.
#[inline(always)]
pub(crate) fn softmax_row(x: &[f32], bias: Option<&[f32]>, scale: f32, o: &mut [f32]) {
    match bias {
        None => o.iter_mut().zip(x).for_each(|(o, v)| *o = v * scale),
        Some(bias) => o.iter_mut().zip(x.iter().zip(bias)).for_each(|(o, (v, b))| *o = v * scale + b),
    }
    let max = o.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    o.iter_mut().for_each(|v| *v = exp_fast(*v - max));
    let sum = sum8(o);
    o.iter_mut().for_each(|v| *v /= sum);
}

/// Softmax backward of one row: `dx = scale * y * (g - sum(g * y))`.
#[inline(always)]
pub(crate) fn softmax_grad_row(y: &[f32], g: &[f32], scale: f32, o: &mut [f32]) {
    let dot = dot8(y, g);
    for ((o, &yv), &gv) in o.iter_mut().zip(y).zip(g) {
        *o = scale * yv * (gv - dot);
    }
}

/// Forward over rows of `k`; `bias` (if any) has `n` rows per batch item, each item spanning `h·n` rows of x.
pub(crate) fn softmax_forward(x: &[f32], k: usize, bias: Option<(&[f32], usize, usize)>, scale: f32) -> Vec<f32> {
    par_fill1(x.len(), k, |range, out| softmax_chunk(x, k, bias, scale, range, out))
}

multiversion! {
    /// [`softmax_forward`] of the rows `range` into `out`.
    fn softmax_chunk(
        x: &[f32],
        k: usize,
        bias: Option<(&[f32], usize, usize)>,
        scale: f32,
        range: Range<usize>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let mut row = vec![0f32; k];
        for (i, r) in range.enumerate() {
            let b = bias.map(|(bias, h, n)| {
                let (item, row_in_head) = (r / (h * n), r % n);
                &bias[(item * n + row_in_head) * k..(item * n + row_in_head + 1) * k]
            });
            softmax_row(&x[r * k..(r + 1) * k], b, scale, &mut row);
            out[i * k..(i + 1) * k].iter_mut().zip(&row).for_each(|(o, v)| {
                o.write(*v);
            });
        }
    }
}

multiversion! {
    /// Softmax backward of the rows `range` into `out`.
    fn softmax_grad_chunk(y: &[f32], g: &[f32], k: usize, scale: f32, range: Range<usize>, out: &mut [f32]) {
        for (i, r) in range.enumerate() {
            let at = r * k..(r + 1) * k;
            softmax_grad_row(&y[at.clone()], &g[at], scale, &mut out[i * k..(i + 1) * k]);
        }
    }
}

/// Softmax backward over rows of `k` values: `dx = scale · y · (g - Σ g y)` from the result `y` and its
/// gradient `g` (same length).
pub(crate) fn softmax_backward_values(y: &[f32], g: &[f32], k: usize, scale: f32) -> Vec<f32> {
    let mut dx = buffer(y.len());
    par_items(y.len() / k.max(1), vec![(&mut dx, k)], |range, outs| softmax_grad_chunk(y, g, k, scale, range, outs[0]));
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn rand_tensor(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2f32..2.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Compares the fused op with the reference on values and on the gradients of every input (through a
    /// random linear functional of the output).
    fn check(shapes: &[&[usize]], fused: impl Fn(&[Tensor]) -> Tensor, reference: impl Fn(&[Tensor]) -> Tensor) {
        let vars: Vec<Var> =
            shapes.iter().enumerate().map(|(i, s)| Var::from_tensor(&rand_tensor(s, i as u64)).unwrap()).collect();
        let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (yf, yr) = (fused(&inputs), reference(&inputs));
        assert!(max_diff(&yf, &yr) < 1e-5, "values differ by {}", max_diff(&yf, &yr));
        let w = rand_tensor(yf.dims(), 99);
        let gf = (&yf * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (&yr * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            match (gf.get(v.as_tensor()), gr.get(v.as_tensor())) {
                (Some(a), Some(b)) => {
                    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                    assert!(max_diff(a, b) <= 1e-4 * scale.max(1.0), "input {i}: grads differ by {}", max_diff(a, b));
                }
                (None, None) => {}
                (a, b) => panic!("input {i}: fused grad {:?}, reference grad {:?}", a.is_some(), b.is_some()),
            }
        }
    }

    #[test]
    fn layer_norm_matches_reference() {
        check(&[&[3, 5, 16]], |t| layer_norm(&t[0], 1e-6).unwrap(), |t| reference::layer_norm(&t[0], 1e-6).unwrap());
    }

    #[test]
    fn layer_norm_modulate_matches_reference() {
        check(
            &[&[3, 5, 16], &[3, 16], &[3, 16]],
            |t| layer_norm_modulate(&t[0], &t[1], &t[2], 1e-6).unwrap(),
            |t| reference::modulate(&reference::layer_norm(&t[0], 1e-6).unwrap(), &t[1], &t[2]).unwrap(),
        );
    }

    #[test]
    fn token_ops_accept_flattened_tokens() {
        check(
            &[&[15, 16], &[3, 16], &[3, 16]],
            |t| layer_norm_modulate(&t[0], &t[1], &t[2], 1e-6).unwrap(),
            |t| {
                let x = t[0].reshape((3, 5, 16)).unwrap();
                reference::modulate(&reference::layer_norm(&x, 1e-6).unwrap(), &t[1], &t[2])
                    .unwrap()
                    .reshape((15, 16))
                    .unwrap()
            },
        );
        check(
            &[&[15, 8], &[15, 8], &[3, 8]],
            |t| gated_residual(&t[0], &t[1], &t[2]).unwrap(),
            |t| {
                let a = t[1].reshape((3, 5, 8)).unwrap().broadcast_mul(&t[2].unsqueeze(1).unwrap()).unwrap();
                (&t[0] + a.reshape((15, 8)).unwrap()).unwrap()
            },
        );
    }

    #[test]
    fn gated_residual_matches_reference() {
        check(
            &[&[3, 5, 8], &[3, 5, 8], &[3, 8]],
            |t| gated_residual(&t[0], &t[1], &t[2]).unwrap(),
            |t| (&t[0] + t[1].broadcast_mul(&t[2].unsqueeze(1).unwrap()).unwrap()).unwrap(),
        );
    }

    #[test]
    fn linear_matches_reference() {
        check(
            &[&[20, 6], &[5, 6], &[5]],
            |t| linear(&t[0], &t[1], &t[2]).unwrap(),
            |t| t[0].matmul(&t[1].t().unwrap()).unwrap().broadcast_add(&t[2]).unwrap(),
        );
    }

    #[test]
    fn gelu_matches_candle() {
        check(&[&[5000]], |t| gelu_tanh(&t[0]).unwrap(), |t| t[0].gelu().unwrap());
        let x = rand_tensor(&[10_000], 3);
        assert!(max_diff(&gelu_tanh(&x).unwrap(), &x.gelu().unwrap()) < 1e-6);
    }

    #[test]
    fn fast_gelu_and_exp_are_accurate() {
        let k0 = (2.0 / std::f64::consts::PI).sqrt();
        let gelu64 = |x: f64| 0.5 * x * (1.0 + (k0 * (x + 0.044715 * x * x * x)).tanh());
        for i in -200_000..=200_000 {
            let x = i as f32 * 1e-4; // [-20, 20]
            let (v, exact) = (gelu_value(x) as f64, gelu64(x as f64));
            assert!((v - exact).abs() <= 1e-6 * exact.abs().max(1e-2), "gelu({x}) = {v}, exact {exact}");
            let h = 1e-4;
            let slope = (gelu64(x as f64 + h) - gelu64(x as f64 - h)) / (2.0 * h);
            let d = gelu_derivative(x) as f64;
            assert!((d - slope).abs() <= 1e-5 * slope.abs().max(1.0), "gelu'({x}) = {d}, exact {slope}");
        }
        assert!(gelu_value(f32::NAN).is_nan() && gelu_derivative(f32::NAN).is_nan());
        assert_eq!(gelu_value(100.0), 100.0);
        assert!(gelu_value(-100.0).abs() < 1e-30);
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let exact = (x as f64).exp();
            let err = (exp_fast(x) as f64 - exact).abs() / exact;
            assert!(err < 3e-7, "exp relative error {err} at {x}");
        }
        assert!(exp_fast(f32::NAN).is_nan());
        assert_eq!(exp_fast(0.0), 1.0);
    }

    #[test]
    fn softmax_kernel_matches_reference() {
        // (Its backward is checked through the attention ops.)
        let x = rand_tensor(&[2, 3, 5, 4], 5);
        let bias = rand_tensor(&[2, 5, 4], 7);
        let fused = with_data(&x, "test", |xs| {
            with_data(&bias, "test", |bs| cpu_tensor(softmax_forward(xs, 4, Some((bs, 3, 5)), 0.5), x.shape()))
        })
        .unwrap();
        let z = x.affine(0.5, 0.0).unwrap().broadcast_add(&bias.unsqueeze(1).unwrap()).unwrap();
        assert!(max_diff(&fused, &reference::softmax_last_dim(&z).unwrap()) < 1e-6);
    }
}
