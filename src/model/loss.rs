//! The rectified-flow training objective.

use candle_core::{Result, Tensor};

use super::denoiser::Denoiser;

/// Rectified-flow loss given drawn noise: `x_t = (1 - t) x0 + t eps`, target `v = eps - x0`, MSE mean over all
/// elements. t `[B]` f32 (already `sigmoid(normal)`), eps like x0 `[B, 3, H, W]`. Returns the scalar loss
/// tensor with the graph attached.
pub fn flow_matching_loss(
    model: &Denoiser,
    x0: &Tensor,
    t: &Tensor,
    eps: &Tensor,
    y: &Tensor,
    boxes: &Tensor,
    box_classes: &Tensor,
) -> Result<Tensor> {
    let b = x0.dim(0)?;
    let tb = t.reshape((b, 1, 1, 1))?;
    let xt = (x0.broadcast_mul(&tb.affine(-1.0, 1.0)?)? + eps.broadcast_mul(&tb)?)?;
    let target = (eps - x0)?;
    let v = model.forward(&xt, t, y, boxes, box_classes)?;
    (v - target)?.sqr()?.mean_all()
}
