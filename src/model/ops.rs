//! Elementary differentiable ops the denoiser needs and candle lacks (with a backward): parameter-free
//! LayerNorm, softmax over the last dimension, tanh-approximated GELU.

use candle_core::{Result, Tensor, D};

/// LayerNorm over the last dimension without affine parameters: `(x - mean) / sqrt(var + eps)`, biased variance.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred.broadcast_div(&(var + eps)?.sqrt()?)
}

/// Softmax over the last dimension (differentiable, unlike `candle_nn::ops::softmax_last_dim`).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    candle_nn::ops::softmax(x, D::Minus1)
}

/// GELU with the tanh approximation (PyTorch's `GELU(approximate="tanh")`; candle's `gelu`, not `gelu_erf`).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.gelu()
}
