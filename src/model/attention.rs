//! Multi-head attention as single fused ops.
//!
//! Written with basic candle ops, one attention is some twenty graph nodes (head split: reshape, permute,
//! copy, narrow; transposes; scale; softmax; head merge), and candle's backward pays a zero-fill and an add
//! over the full tensor for every node. Here each attention is one custom op on the CPU: the forward splits the
//! heads in one pass, runs the two batched matmuls with candle's gemm and a fused softmax, and merges the heads
//! in one pass; the backward does the same in reverse. Off the CPU the basic-op versions in [`reference`](mod@reference) run.
//!
//! Token tensors are 2-D, `[B·N, W]`, heads laid out as PyTorch's `reshape(b, n, h, d)`; the scale is
//! `1/sqrt(head_dim)`.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Mutex;

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

use super::cpu::{
    buffer, check_dims, cpu_tensor, dot8, fused, multiversion, par_fill, par_fill1, par_items, slice, with_data,
};
use super::matmul::{matmul, Mat};
use super::ops::{softmax_backward_values, softmax_forward, softmax_grad_row, softmax_row};

/// Self-attention on the fused `qkv` projection of B items: qkv `[B·N, 3W]` (q | k | v, each `heads × d`) to
/// the merged heads `[B·N, W]`, before the output projection.
pub fn self_attention(qkv: &Tensor, batch: usize, heads: usize) -> Result<Tensor> {
    let (rows, w3) = qkv.dims2()?;
    if batch == 0 || rows % batch != 0 || w3 % (3 * heads) != 0 {
        bail!("self_attention: qkv {:?} does not split into {batch} items and 3 × {heads} heads", qkv.dims())
    }
    if !fused(qkv) {
        return reference::self_attention(qkv, batch, heads);
    }
    qkv.contiguous()?.apply_op1(SelfAttention::new(batch, heads, w3 / 3 / heads))
}

/// Cross-attention of B items: queries q `[B·N, W]` attend to keys / values kv `[B·K, 2W]` (k | v) with a
/// constant logit bias `[B, N, K]` shared by the heads; returns the merged heads `[B·N, W]`.
pub fn cross_attention(q: &Tensor, kv: &Tensor, bias: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, w) = q.dims2()?;
    let (b, n, k) = bias.dims3()?;
    check_dims("cross_attention q", q, &[b * n, w])?;
    check_dims("cross_attention kv", kv, &[b * k, 2 * w])?;
    if heads == 0 || w % heads != 0 || rows != b * n {
        bail!("cross_attention: width {w} does not split into {heads} heads")
    }
    if !fused(q) {
        return reference::cross_attention(q, kv, bias, heads);
    }
    let op = CrossAttention { heads, scale: 1.0 / ((w / heads) as f32).sqrt() };
    q.contiguous()?.apply_op3(&kv.contiguous()?, &bias.detach().contiguous()?, op)
}

/// The same attention as basic candle ops: used off the CPU and as the test oracle.
pub mod reference {
    use candle_core::{Result, Tensor};

    use crate::model::ops::reference::softmax_last_dim;

    /// `[B·L, parts·W]` to `parts` contiguous `[B·h, L, d]` tensors.
    fn split(x: &Tensor, batch: usize, parts: usize, heads: usize) -> Result<Vec<Tensor>> {
        let (rows, pw) = x.dims2()?;
        let (l, d) = (rows / batch, pw / parts / heads);
        let x = x.reshape((batch, l, parts, heads, d))?.permute((2, 0, 3, 1, 4))?.contiguous()?;
        (0..parts).map(|i| x.get(i)?.reshape((batch * heads, l, d))).collect()
    }

    /// `[B·h, L, d]` to `[B·L, h·d]`.
    fn merge(x: &Tensor, batch: usize) -> Result<Tensor> {
        let (bh, l, d) = x.dims3()?;
        let heads = bh / batch;
        x.reshape((batch, heads, l, d))?.transpose(1, 2)?.reshape((batch * l, heads * d))
    }

    /// See [`super::self_attention`].
    pub fn self_attention(qkv: &Tensor, batch: usize, heads: usize) -> Result<Tensor> {
        let p = split(qkv, batch, 3, heads)?;
        let scale = 1.0 / (p[0].dim(2)? as f64).sqrt();
        let att = softmax_last_dim(&(p[0].matmul(&p[1].t()?)? * scale)?)?;
        merge(&att.matmul(&p[2])?, batch)
    }

    /// See [`super::cross_attention`].
    pub fn cross_attention(q: &Tensor, kv: &Tensor, bias: &Tensor, heads: usize) -> Result<Tensor> {
        let batch = bias.dim(0)?;
        let q = split(q, batch, 1, heads)?.remove(0);
        let kv = split(kv, batch, 2, heads)?;
        let (bh, n, d) = q.dims3()?;
        let logits = (q.matmul(&kv[0].t()?)? * (1.0 / (d as f64).sqrt()))?;
        let k = logits.dim(2)?;
        let logits = logits.reshape((batch, heads, n, k))?.broadcast_add(&bias.unsqueeze(1)?)?.reshape((bh, n, k))?;
        merge(&softmax_last_dim(&logits)?.matmul(&kv[1])?, batch)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Head layout.

/// Splits `src` `[B·L, parts·h·d]` into `parts` buffers `[B·h, L, d]`.
fn split_heads(src: &[f32], batch: usize, l: usize, parts: usize, heads: usize, d: usize) -> Vec<Vec<f32>> {
    let w = heads * d;
    par_fill(parts, batch * heads * l * d, heads * l * d, |items, dst| {
        for (li, item) in items.enumerate() {
            for t in 0..l {
                let row = &src[(item * l + t) * parts * w..(item * l + t + 1) * parts * w];
                for (p, out) in dst.iter_mut().enumerate() {
                    for hh in 0..heads {
                        let at = (li * heads + hh) * l * d + t * d;
                        write_copy(&mut out[at..at + d], &row[p * w + hh * d..p * w + (hh + 1) * d]);
                    }
                }
            }
        }
    })
}

/// Merges `parts` buffers `[B·h, L, d]` of `batch` items into `dst` `[B·L, parts·h·d]` (every value written).
fn merge_heads_into(parts: &[&[f32]], l: usize, heads: usize, d: usize, dst: &mut [MaybeUninit<f32>]) {
    let w = heads * d;
    let row_len = parts.len() * w;
    for (r, row) in dst.chunks_exact_mut(row_len).enumerate() {
        let (item, t) = (r / l, r % l);
        for (p, src) in parts.iter().enumerate() {
            for hh in 0..heads {
                let at = (item * heads + hh) * l * d + t * d;
                write_copy(&mut row[p * w + hh * d..p * w + (hh + 1) * d], &src[at..at + d]);
            }
        }
    }
}

/// Initialises `dst` with a copy of `src` (same length).
#[inline(always)]
fn write_copy(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(o, v)| {
        o.write(*v);
    });
}

/// Runs `f` on the data of up to three tensors at once.
fn with3<R>(
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    op: &str,
    f: impl FnOnce(&[f32], &[f32], &[f32]) -> Result<R>,
) -> Result<R> {
    with_data(a, op, |a| with_data(b, op, |b| with_data(c, op, |c| f(a, b, c))))
}

// ---------------------------------------------------------------------------------------------------------
// Self-attention.

/// What the forward keeps for the backward: q, k, v `[B·h, N, d]`, and the attention `[len·h, N, N]` of each
/// chunk of items (start item, values).
struct Saved {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<(usize, Vec<f32>)>,
}

/// Fused self-attention; arg qkv `[B·N, 3W]`.
///
/// Items are processed in parallel chunks, each running its heads' products ([`super::matmul`], one thread
/// each), softmax and head merge on its own.
pub(crate) struct SelfAttention {
    batch: usize,
    heads: usize,
    scale: f32,
    saved: Mutex<Option<Saved>>,
}

/// Keeps the first error raised inside a parallel loop.
struct FirstError(Mutex<Option<candle_core::Error>>);

impl FirstError {
    fn new() -> Self {
        Self(Mutex::new(None))
    }

    fn keep<T>(&self, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                None
            }
        }
    }

    fn check(self) -> Result<()> {
        match self.0.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Fills a never-read output chunk after a failed kernel (the error is returned instead of the data).
fn fill_zero(dst: &mut [MaybeUninit<f32>]) {
    dst.iter_mut().for_each(|o| {
        o.write(0.0);
    });
}

/// Matrix `i` `[rows, cols]` of consecutive row-major matrices in `data`.
fn block(data: &[f32], i: usize, rows: usize, cols: usize) -> Mat<'_> {
    Mat::rows(&data[i * rows * cols..(i + 1) * rows * cols], rows, cols)
}

impl SelfAttention {
    /// Forward of the items `range`: returns their attention `[len·h, N, N]` and writes their merged output.
    fn forward_chunk(
        &self,
        saved: &Saved,
        range: &Range<usize>,
        n: usize,
        d: usize,
        dst: &mut [MaybeUninit<f32>],
    ) -> Result<Vec<f32>> {
        let heads = range.start * self.heads..range.end * self.heads;
        let mut scores = Vec::with_capacity(heads.len() * n * n);
        for i in heads.clone() {
            scores.extend_from_slice(&matmul(block(&saved.q, i, n, d), block(&saved.k, i, n, d).t(), None)?);
        }
        let att = softmax_forward(&scores, n, None, self.scale);
        drop(scores);
        let mut out = Vec::with_capacity(heads.len() * n * d);
        for (j, i) in heads.enumerate() {
            out.extend_from_slice(&matmul(
                Mat::rows(&att[j * n * n..(j + 1) * n * n], n, n),
                block(&saved.v, i, n, d),
                None,
            )?);
        }
        merge_heads_into(&[&out], n, self.heads, d, dst);
        Ok(att)
    }

    /// Backward of the items `range` (rows of `grad`): writes their rows of dqkv.
    fn backward_chunk(
        &self,
        saved: &Saved,
        g: &[f32],
        range: &Range<usize>,
        n: usize,
        d: usize,
        dst: &mut [MaybeUninit<f32>],
    ) -> Result<()> {
        let h = self.heads;
        let Some((_, att)) = saved.att.iter().find(|(s, a)| *s == range.start && a.len() == range.len() * h * n * n)
        else {
            bail!("{}: backward chunk {range:?} has no saved attention", self.name())
        };
        let w = h * d;
        let rows = &g[range.start * n * w..range.end * n * w];
        let dout = split_heads(rows, range.len(), n, 1, h, d).remove(0);
        let att_of = |j: usize| Mat::rows(&att[j * n * n..(j + 1) * n * n], n, n);
        let heads = range.start * h..range.end * h;
        let (mut dv, mut datt) = (Vec::with_capacity(dout.len()), Vec::with_capacity(att.len()));
        for (j, i) in heads.clone().enumerate() {
            dv.extend_from_slice(&matmul(att_of(j).t(), block(&dout, j, n, d), None)?);
            datt.extend_from_slice(&matmul(block(&dout, j, n, d), block(&saved.v, i, n, d).t(), None)?);
        }
        let ds = softmax_backward_values(att, &datt, n, self.scale);
        drop(datt);
        let ds_of = |j: usize| Mat::rows(&ds[j * n * n..(j + 1) * n * n], n, n);
        let (mut dq, mut dk) = (Vec::with_capacity(dout.len()), Vec::with_capacity(dout.len()));
        for (j, i) in heads.enumerate() {
            dq.extend_from_slice(&matmul(ds_of(j), block(&saved.k, i, n, d), None)?);
            dk.extend_from_slice(&matmul(ds_of(j).t(), block(&saved.q, i, n, d), None)?);
        }
        merge_heads_into(&[&dq, &dk, &dv], n, h, d, dst);
        Ok(())
    }
}

impl SelfAttention {
    /// The fused self-attention of `batch` items over `heads` heads (scale `1/sqrt(head_dim)`), holding what its
    /// backward needs after a forward.
    pub(crate) fn new(batch: usize, heads: usize, head_dim: usize) -> Self {
        Self { batch, heads, scale: 1.0 / (head_dim as f32).sqrt(), saved: Mutex::new(None) }
    }

    /// Forward on qkv `[rows, 3W]`: the merged heads `[rows, W]`; keeps q, k, v and the attention.
    pub(crate) fn forward_rows(&self, qkv: &[f32], rows: usize, w3: usize) -> Result<Vec<f32>> {
        let (b, h) = (self.batch, self.heads);
        let (n, d) = (rows / b, w3 / 3 / h);
        let mut parts = split_heads(qkv, b, n, 3, h, d).into_iter();
        let mut next = || parts.next().ok_or_else(|| candle_core::Error::Msg("head split".into()));
        let mut saved = Saved { q: next()?, k: next()?, v: next()?, att: Vec::new() };
        let errors = FirstError::new();
        let att = Mutex::new(Vec::new());
        let merged = par_fill1(rows * w3 / 3, n * w3 / 3, |range, dst| {
            match errors.keep(self.forward_chunk(&saved, &range, n, d, dst)) {
                Some(a) => att.lock().unwrap_or_else(|p| p.into_inner()).push((range.start, a)),
                None => fill_zero(dst),
            }
        });
        errors.check()?;
        saved.att = att.into_inner().unwrap_or_else(|p| p.into_inner());
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        Ok(merged)
    }

    /// Backward of the last forward: the gradient `[rows, W]` of the merged heads to dqkv `[rows, 3W]`.
    pub(crate) fn backward_rows(&self, g: &[f32], rows: usize, w3: usize) -> Result<Vec<f32>> {
        let guard = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let Some(saved) = guard.as_ref() else { bail!("{}: backward without a forward", self.name()) };
        let (b, h) = (self.batch, self.heads);
        let (n, d) = (rows / b, w3 / 3 / h);
        let errors = FirstError::new();
        let dqkv = par_fill1(rows * w3, n * w3, |range, dst| {
            if errors.keep(self.backward_chunk(saved, g, &range, n, d, dst)).is_none() {
                fill_zero(dst);
            }
        });
        errors.check()?;
        Ok(dqkv)
    }
}

impl CustomOp1 for SelfAttention {
    fn name(&self) -> &'static str {
        "wick-self-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = slice(s, l, self.name())?;
        let (rows, w3) = l.shape().dims2()?;
        Ok((CpuStorage::F32(self.forward_rows(qkv, rows, w3)?), Shape::from((rows, w3 / 3))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (rows, w3) = arg.dims2()?;
        let dqkv = with_data(grad, self.name(), |g| self.backward_rows(g, rows, w3))?;
        Ok(Some(cpu_tensor(dqkv, (rows, w3))?))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Cross-attention: few keys per item (the layout slots), so plain loops; the backward recomputes the
// attention instead of keeping it.

/// Fused cross-attention; args q `[B·N, W]`, kv `[B·K, 2W]`, bias `[B, N, K]`.
struct CrossAttention {
    heads: usize,
    scale: f32,
}

/// Shapes of a cross-attention call.
#[derive(Clone, Copy)]
struct CrossDims {
    n: usize,
    k: usize,
    w: usize,
    d: usize,
    heads: usize,
    scale: f32,
}

impl CrossAttention {
    fn dims(&self, q: &Shape, bias: &Shape) -> Result<(usize, CrossDims)> {
        let (_, w) = q.dims2()?;
        let (b, n, k) = bias.dims3()?;
        if k > MAX_KEYS {
            bail!("{}: at most {MAX_KEYS} keys per item, got {k}", self.name())
        }
        Ok((b, CrossDims { n, k, w, d: w / self.heads, heads: self.heads, scale: self.scale }))
    }
}

/// Most layout slots the cross-attention kernels take (their per-row scratch lives on the stack).
const MAX_KEYS: usize = 64;

/// The attention of one (item, token, head) into `att` (length K).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn cross_row(q: &[f32], kv: &[f32], bias: &[f32], dims: CrossDims, item: usize, t: usize, hh: usize, att: &mut [f32]) {
    let CrossDims { n, k, w, d, scale, .. } = dims;
    let qv = &q[(item * n + t) * w + hh * d..(item * n + t) * w + (hh + 1) * d];
    let mut scores = [0f32; MAX_KEYS];
    let scores = &mut scores[..k];
    for (j, s) in scores.iter_mut().enumerate() {
        let kj = &kv[(item * k + j) * 2 * w + hh * d..(item * k + j) * 2 * w + (hh + 1) * d];
        *s = dot8(qv, kj);
    }
    let bias_row = &bias[(item * n + t) * k..(item * n + t + 1) * k];
    softmax_row(scores, Some(bias_row), scale, att);
}

multiversion! {
    /// Cross-attention forward of the items `items` into `dst` (their rows of the merged output).
    fn cross_forward_chunk(q: &[f32], kv: &[f32], bias: &[f32], dims: CrossDims, items: Range<usize>, dst: &mut [MaybeUninit<f32>]) {
        let CrossDims { n, k, w, d, heads, .. } = dims;
        let mut att = [0f32; MAX_KEYS];
        let att = &mut att[..k];
        let mut acc = vec![0f32; d];
        for (li, item) in items.enumerate() {
            for t in 0..n {
                for hh in 0..heads {
                    cross_row(q, kv, bias, dims, item, t, hh, att);
                    acc.fill(0.0);
                    for (j, a) in att.iter().enumerate() {
                        let vj = &kv[(item * k + j) * 2 * w + w + hh * d..(item * k + j) * 2 * w + w + (hh + 1) * d];
                        acc.iter_mut().zip(vj).for_each(|(o, v)| *o += a * v);
                    }
                    let o = &mut dst[(li * n + t) * w + hh * d..(li * n + t) * w + (hh + 1) * d];
                    write_copy(o, &acc);
                }
            }
        }
    }
}

multiversion! {
    /// Cross-attention backward of the items `items`: accumulates their rows of dq and dkv.
    fn cross_backward_chunk(
        q: &[f32],
        kv: &[f32],
        bias: &[f32],
        g: &[f32],
        dims: CrossDims,
        items: Range<usize>,
        dst: &mut [&mut [f32]],
    ) {
        let CrossDims { n, k, w, d, heads, scale } = dims;
        let (mut att, mut datt, mut ds) = ([0f32; MAX_KEYS], [0f32; MAX_KEYS], [0f32; MAX_KEYS]);
        let (att, datt, ds) = (&mut att[..k], &mut datt[..k], &mut ds[..k]);
        let [dq_out, dkv_out] = dst else { return };
        for (li, item) in items.enumerate() {
            for t in 0..n {
                for hh in 0..heads {
                    cross_row(q, kv, bias, dims, item, t, hh, att);
                    let at = (item * n + t) * w + hh * d;
                    let (go, qv) = (&g[at..at + d], &q[at..at + d]);
                    for j in 0..k {
                        let v_at = (item * k + j) * 2 * w + w + hh * d;
                        datt[j] = dot8(go, &kv[v_at..v_at + d]);
                        let dv = &mut dkv_out[(li * k + j) * 2 * w + w + hh * d..][..d];
                        dv.iter_mut().zip(go).for_each(|(o, gv)| *o += att[j] * gv);
                    }
                    softmax_grad_row(att, datt, scale, ds);
                    let dqv = &mut dq_out[(li * n + t) * w + hh * d..][..d];
                    for j in 0..k {
                        let k_at = (item * k + j) * 2 * w + hh * d;
                        dqv.iter_mut().zip(&kv[k_at..k_at + d]).for_each(|(o, kv)| *o += ds[j] * kv);
                        let dk = &mut dkv_out[(li * k + j) * 2 * w + hh * d..][..d];
                        dk.iter_mut().zip(qv).for_each(|(o, qv)| *o += ds[j] * qv);
                    }
                }
            }
        }
    }
}

impl CustomOp3 for CrossAttention {
    fn name(&self) -> &'static str {
        "wick-cross-attention"
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
        let (q, kv, bias) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let (b, dims) = self.dims(l1.shape(), l3.shape())?;
        let out = par_fill1(b * dims.n * dims.w, dims.n * dims.w, |items, dst| {
            cross_forward_chunk(q, kv, bias, dims, items, dst)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q_t: &Tensor,
        kv_t: &Tensor,
        bias_t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, dims) = self.dims(q_t.shape(), bias_t.shape())?;
        let CrossDims { n, k, w, .. } = dims;
        let (dq, dkv) = with3(q_t, kv_t, bias_t, self.name(), |q, kv, bias| {
            with_data(grad, self.name(), |g| {
                let mut dq = buffer(b * n * w);
                let mut dkv = buffer(b * k * 2 * w);
                par_items(b, vec![(&mut dq, n * w), (&mut dkv, k * 2 * w)], |items, dst| {
                    cross_backward_chunk(q, kv, bias, g, dims, items, dst)
                });
                Ok((dq, dkv))
            })
        })?;
        Ok((Some(cpu_tensor(dq, q_t.shape())?), Some(cpu_tensor(dkv, kv_t.shape())?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    fn rand_var(shape: &[usize], seed: u64) -> Var {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..shape.iter().product()).map(|_| rng.random_range(-2f32..2.0)).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Fused vs reference: values and the gradients of `inputs` through a random linear functional.
    fn compare(inputs: &[&Var], fused: Tensor, reference: Tensor) {
        assert!(max_diff(&fused, &reference) < 1e-5, "values differ by {}", max_diff(&fused, &reference));
        let w = rand_var(fused.dims(), 77);
        let gf = (&fused * w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (&reference * w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in inputs.iter().enumerate() {
            let (a, b) = (gf.get(v.as_tensor()).unwrap(), gr.get(v.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-4, "input {i}: grads differ by {}", max_diff(a, b));
        }
    }

    #[test]
    fn self_attention_matches_reference() {
        let (b, n, heads, d) = (3, 5, 2, 4);
        let qkv = rand_var(&[b * n, 3 * heads * d], 1);
        let fused = self_attention(qkv.as_tensor(), b, heads).unwrap();
        let reference = reference::self_attention(qkv.as_tensor(), b, heads).unwrap();
        assert_eq!(fused.dims(), &[b * n, heads * d]);
        compare(&[&qkv], fused, reference);
    }

    #[test]
    fn cross_attention_matches_reference() {
        let (b, n, k, heads, d) = (3, 5, 4, 2, 4);
        let q = rand_var(&[b * n, heads * d], 2);
        let kv = rand_var(&[b * k, 2 * heads * d], 3);
        let bias = rand_var(&[b, n, k], 4).as_tensor().detach();
        let fused = cross_attention(q.as_tensor(), kv.as_tensor(), &bias, heads).unwrap();
        let reference = reference::cross_attention(q.as_tensor(), kv.as_tensor(), &bias, heads).unwrap();
        compare(&[&q, &kv], fused, reference);
    }
}
