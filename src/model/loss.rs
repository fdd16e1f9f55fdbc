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
    squared_errors(model, x0, t, eps, y, boxes, box_classes)?.mean_all()
}

/// The squared error of the predicted velocity per element, `[B, 3, H, W]`, with the graph attached.
fn squared_errors(
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
    (v - target)?.sqr()
}

/// [`flow_matching_loss`] with each pixel's squared error weighted: `Σ w·e² / Σ w` over every element, with
/// `pixel_weights` `[B, 1, H, W]` (the same weight for the three channels of a pixel; from
/// [`object_pixel_weights`]).
#[allow(clippy::too_many_arguments)]
pub fn weighted_flow_matching_loss(
    model: &Denoiser,
    x0: &Tensor,
    t: &Tensor,
    eps: &Tensor,
    y: &Tensor,
    boxes: &Tensor,
    box_classes: &Tensor,
    pixel_weights: &Tensor,
) -> Result<Tensor> {
    let total = f64::from(pixel_weights.sum_all()?.to_scalar::<f32>()?) * x0.dim(1)? as f64;
    squared_errors(model, x0, t, eps, y, boxes, box_classes)?
        .broadcast_mul(pixel_weights)?
        .sum_all()?
        .affine(1.0 / total.max(f64::MIN_POSITIVE), 0.0)
}

/// Per-pixel loss weights `[count, side, side]` (row-major, flattened) that favour an image's objects
/// (`boxes` `[count, slots, 4]` normalised x0, y0, x1, y1; slots of class `null_class` are empty). A pixel whose
/// centre lies inside an object's box weighs `1 + extra`, or with `per_object` `1 + extra · r / a` for a box
/// of `a` pixels, `r` = the pixels of a box a quarter of the image wide (so every object gains the same total
/// weight); where boxes overlap the larger weight holds. Other pixels weigh 1.
pub fn object_pixel_weights(
    boxes: &[f32],
    box_classes: &[u32],
    slots: usize,
    null_class: u32,
    side: usize,
    extra: f32,
    per_object: bool,
) -> Vec<f32> {
    let count = box_classes.len() / slots.max(1);
    let reference_area = (side as f32 / 4.0).powi(2);
    let mut weights = vec![1.0f32; count * side * side];
    for (image, plane) in weights.chunks_exact_mut(side * side).enumerate() {
        for slot in 0..slots {
            if box_classes[image * slots + slot] == null_class {
                continue;
            }
            let b = &boxes[(image * slots + slot) * 4..(image * slots + slot) * 4 + 4];
            let centre = |i: usize| (i as f32 + 0.5) / side as f32;
            let rows: Vec<usize> = (0..side).filter(|&y| (b[1]..=b[3]).contains(&centre(y))).collect();
            let columns: Vec<usize> = (0..side).filter(|&x| (b[0]..=b[2]).contains(&centre(x))).collect();
            let area = (rows.len() * columns.len()) as f32;
            let weight = if per_object { 1.0 + extra * reference_area / area.max(1.0) } else { 1.0 + extra };
            for y in &rows {
                for x in &columns {
                    let pixel = &mut plane[y * side + x];
                    *pixel = pixel.max(weight);
                }
            }
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_pixels_weigh_more_and_empty_slots_nothing() {
        // One 4×4 image, two slots: a box over the top-left 2×2 pixels, and an empty slot covering everything.
        let boxes = [0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 1.0, 1.0];
        let weights = object_pixel_weights(&boxes, &[1, 9], 2, 9, 4, 3.0, false);
        #[rustfmt::skip]
        let expected = [
            4.0, 4.0, 1.0, 1.0,
            4.0, 4.0, 1.0, 1.0,
            1.0, 1.0, 1.0, 1.0,
            1.0, 1.0, 1.0, 1.0,
        ];
        assert_eq!(weights, expected);
    }

    #[test]
    fn per_object_weights_give_every_object_the_same_total() {
        // One 8×8 image (reference box: 2×2 = 4 pixels): a 2×2 box and a 4×4 box.
        let boxes = [0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0];
        let weights = object_pixel_weights(&boxes, &[0, 1], 2, 9, 8, 2.0, true);
        let extra_of = |x0: usize, y0: usize, n: usize| -> f32 {
            (y0..y0 + n).flat_map(|y| (x0..x0 + n).map(move |x| (x, y))).map(|(x, y)| weights[y * 8 + x] - 1.0).sum()
        };
        // Each object gains 2 × 4 = 8: 2 per pixel of the small box, 0.5 per pixel of the large one.
        assert_eq!(weights[0], 3.0);
        assert_eq!(weights[63], 1.5);
        assert!((extra_of(0, 0, 2) - 8.0).abs() < 1e-5 && (extra_of(4, 4, 4) - 8.0).abs() < 1e-5);
        assert_eq!(weights.iter().filter(|&&w| w == 1.0).count(), 64 - 4 - 16);
    }

    #[test]
    fn uniform_weights_give_the_plain_mean() {
        use crate::model::{build_model, randomize_zero_init, ModelSpec};
        let device = candle_core::Device::Cpu;
        let spec = ModelSpec::from_preset(crate::config::ModelPreset::Tiny, true);
        let (vars, model) = build_model(spec, &device, 3).unwrap();
        randomize_zero_init(spec, &vars, 4).unwrap();
        let (b, side) = (2, spec.image_size);
        let x0 = Tensor::randn(0f32, 1.0, (b, 3, side, side), &device).unwrap();
        let eps = Tensor::randn(0f32, 1.0, (b, 3, side, side), &device).unwrap();
        let t = Tensor::new(&[0.3f32, 0.7], &device).unwrap();
        let y = Tensor::new(&[0u32, 1], &device).unwrap();
        let boxes = Tensor::zeros((b, spec.slots, 4), candle_core::DType::F32, &device).unwrap();
        let classes = Tensor::full(spec.null_class(), (b, spec.slots), &device).unwrap();
        let plain = flow_matching_loss(&model, &x0, &t, &eps, &y, &boxes, &classes).unwrap();
        let ones = Tensor::full(2.5f32, (b, 1, side, side), &device).unwrap();
        let weighted = weighted_flow_matching_loss(&model, &x0, &t, &eps, &y, &boxes, &classes, &ones).unwrap();
        let (plain, weighted) = (plain.to_scalar::<f32>().unwrap(), weighted.to_scalar::<f32>().unwrap());
        assert!((plain - weighted).abs() < 1e-5 * plain, "{plain} vs {weighted}");
    }
}
