//! Evaluation: the sampler, sample grids, the judge's training.

pub mod grid;
pub mod judge;
pub mod sampler;

/// IoU of two normalised boxes (temporary until the metrics module lands).
pub fn box_iou(a: [f32; 4], b: [f32; 4]) -> f64 {
    let ix = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) as f64;
    let iy = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0) as f64;
    let inter = ix * iy;
    let area = |r: [f32; 4]| ((r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0)) as f64;
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}
