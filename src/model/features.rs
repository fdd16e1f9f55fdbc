//! Fixed (parameter-free) features of the denoiser: the 2-D sin-cos position embedding, sinusoidal timestep
//! features, bbox Fourier features and the adapter's box bias. The constant tables are built once in
//! [`Features::new`]; the per-batch features are computed from them in each forward.

use candle_core::{DType, Device, Result, Tensor};

use super::spec::{ModelSpec, BBOX_FREQS, BOX_BIAS, FREQ_DIM};

/// Max period of the sinusoidal timestep features.
const MAX_PERIOD: f64 = 10000.0;

/// Constant tensors of a spec on one device.
#[derive(Debug, Clone)]
pub(crate) struct Features {
    /// Position embedding `[grid², width]`.
    pub pos: Tensor,
    /// Timestep frequencies `[1, FREQ_DIM / 2]`.
    t_freqs: Tensor,
    /// Bbox frequencies `2^f · π`, `[BBOX_FREQS]`.
    bbox_freqs: Tensor,
    /// Token centres `[1, grid², 1]` along x (columns) and y (rows), in (0, 1).
    centre_x: Tensor,
    centre_y: Tensor,
    /// Index of the null class, as a `[1, 1]` u32 tensor for comparisons.
    null_class: Tensor,
}

impl Features {
    /// Builds the constant tables of `spec` on `device`.
    pub(crate) fn new(spec: &ModelSpec, device: &Device) -> Result<Self> {
        let grid = spec.grid();
        // Timestep frequencies exactly as the reference's f32 arithmetic: exp((-ln(P) · i) / half).
        let half = FREQ_DIM / 2;
        let neg_log = -(MAX_PERIOD.ln()) as f32;
        let t_freqs: Vec<f32> = (0..half).map(|i| ((neg_log * i as f32) / half as f32).exp()).collect();
        let bbox_freqs: Vec<f32> = (0..BBOX_FREQS).map(|f| 2f32.powi(f as i32) * std::f32::consts::PI).collect();
        let centres: Vec<f32> = (0..grid).map(|i| (i as f32 + 0.5) / grid as f32).collect();
        let mut cx = Vec::with_capacity(grid * grid);
        let mut cy = Vec::with_capacity(grid * grid);
        for row in 0..grid {
            for col in 0..grid {
                cx.push(centres[col]);
                cy.push(centres[row]);
            }
        }
        Ok(Self {
            pos: Tensor::from_vec(sincos_pos_embed(spec.width, grid), (grid * grid, spec.width), device)?,
            t_freqs: Tensor::from_vec(t_freqs, (1, half), device)?,
            bbox_freqs: Tensor::from_vec(bbox_freqs, BBOX_FREQS, device)?,
            centre_x: Tensor::from_vec(cx, (1, grid * grid, 1), device)?,
            centre_y: Tensor::from_vec(cy, (1, grid * grid, 1), device)?,
            null_class: Tensor::from_vec(vec![spec.null_class()], (1, 1), device)?,
        })
    }

    /// Sinusoidal features of t `[B]` in [0, 1], scaled by 1000: `[cos | sin]`, `[B, FREQ_DIM]`.
    pub(crate) fn timestep(&self, t: &Tensor) -> Result<Tensor> {
        let args = (t * 1000.0)?.unsqueeze(1)?.broadcast_mul(&self.t_freqs)?;
        Tensor::cat(&[args.cos()?, args.sin()?], 1)
    }

    /// boxes `[B, K, 4]` to `[B, K, 4 · 2 · BBOX_FREQS]`: per coordinate, `sin(2^f π c)` then `cos(2^f π c)`.
    pub(crate) fn bbox(&self, boxes: &Tensor) -> Result<Tensor> {
        let (b, k, _) = boxes.dims3()?;
        let args = boxes.unsqueeze(3)?.broadcast_mul(&self.bbox_freqs)?;
        Tensor::cat(&[args.sin()?, args.cos()?], 3)?.reshape((b, k, 4 * 2 * BBOX_FREQS))
    }

    /// The adapter's attention-logit bias `[B, grid², K]`: `+4` where a token's centre lies inside a real slot's
    /// box (`x0 <= cx <= x1`, `y0 <= cy <= y1`), `-4` outside, `0` for null slots. boxes `[B, K, 4]` as
    /// `(x0, y0, x1, y1)`, box_classes `[B, K]` u32.
    pub(crate) fn box_bias(&self, boxes: &Tensor, box_classes: &Tensor) -> Result<Tensor> {
        let corners = boxes.transpose(1, 2)?; // [B, 4, K]
        let coord = |i: usize| corners.narrow(1, i, 1); // [B, 1, K]
        let mask = |m: Tensor| m.to_dtype(DType::F32);
        let inside = mask(self.centre_x.broadcast_ge(&coord(0)?)?)?
            .mul(&mask(self.centre_x.broadcast_le(&coord(2)?)?)?)?
            .mul(&mask(self.centre_y.broadcast_ge(&coord(1)?)?)?)?
            .mul(&mask(self.centre_y.broadcast_le(&coord(3)?)?)?)?; // [B, N, K]
        let real = box_classes.broadcast_ne(&self.null_class)?.to_dtype(DType::F32)?.unsqueeze(1)?; // [B, 1, K]
        inside.affine(2.0 * BOX_BIAS, -BOX_BIAS)?.broadcast_mul(&real)
    }
}

/// Fixed 2-D sin-cos position embedding `[grid², width]` (row-major tokens), computed in f64 and cast to f32:
/// the first half of the channels encodes the row, the second the column, each as `[sin | cos]`.
pub(crate) fn sincos_pos_embed(width: usize, grid: usize) -> Vec<f32> {
    let d = width / 2; // channels per axis
    let omega: Vec<f64> = (0..d / 2).map(|k| 1.0 / MAX_PERIOD.powf(k as f64 / (d as f64 / 2.0))).collect();
    let mut out = Vec::with_capacity(grid * grid * width);
    for row in 0..grid {
        for col in 0..grid {
            for pos in [row as f64, col as f64] {
                out.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                out.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    out
}
