//! Scores of generated samples as judged by the judge network: top-k accuracy of the requested class and
//! IoU between requested and predicted boxes.

/// Fraction of rows whose target class is among the row's `k` largest logits.
///
/// `logits` is row-major `rows × classes` with `rows = targets.len()`. Ranking: a class ranks ahead of the
/// target when its logit is larger, or equal with a *lower index* (ties are broken by lower index first, so
/// the result never depends on sort stability); a NaN logit ranks below every number. The target is a hit
/// when fewer than `k` classes rank ahead of it: `k ≥ classes` makes every valid target a hit, `k = 0`
/// none. A target `≥ classes` (e.g. an empty layout slot) is never a hit.
///
/// Returns NaN when there are no rows, `classes == 0`, or `logits.len() != targets.len() * classes`.
pub fn top_k_hits(logits: &[f32], classes: usize, targets: &[u32], k: usize) -> f64 {
    if targets.is_empty() || classes == 0 || Some(logits.len()) != targets.len().checked_mul(classes) {
        return f64::NAN;
    }
    let key = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let hits = logits
        .chunks_exact(classes)
        .zip(targets)
        .filter(|(row, &target)| {
            let t = target as usize;
            if t >= classes {
                return false;
            }
            let own = key(row[t]);
            let ahead = row.iter().enumerate().filter(|&(j, &x)| key(x) > own || (key(x) == own && j < t)).count();
            ahead < k
        })
        .count();
    hits as f64 / targets.len() as f64
}

/// Top-1, top-2 and top-3 accuracy: [`top_k_hits`] for k = 1, 2, 3.
pub fn top_k_all(logits: &[f32], classes: usize, targets: &[u32]) -> [f64; 3] {
    [1, 2, 3].map(|k| top_k_hits(logits, classes, targets, k))
}

/// Intersection over union of two boxes `[x0, y0, x1, y1]` (normalised coordinates).
///
/// Swapped corners are normalised first (`[x1, y1, x0, y0]` is the same box). Returns 0 for disjoint or
/// merely touching boxes, when either box is degenerate (zero width or height) or has a non-finite
/// coordinate; otherwise a value in (0, 1], 1 for identical boxes.
pub fn box_iou(a: [f32; 4], b: [f32; 4]) -> f64 {
    if a.iter().chain(&b).any(|v| !v.is_finite()) {
        return 0.0;
    }
    let norm = |r: [f32; 4]| {
        let [x0, y0, x1, y1] = r.map(f64::from);
        [x0.min(x1), y0.min(y1), x0.max(x1), y0.max(y1)]
    };
    let (a, b) = (norm(a), norm(b));
    let area = |r: [f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    let (area_a, area_b) = (area(a), area(b));
    if area_a <= 0.0 || area_b <= 0.0 {
        return 0.0;
    }
    let w = a[2].min(b[2]) - a[0].max(b[0]);
    let h = a[3].min(b[3]) - a[1].max(b[1]);
    if w <= 0.0 || h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    (inter / (area_a + area_b - inter)).clamp(0.0, 1.0)
}

/// Mean [`box_iou`] of paired boxes (`requested[i]` against `judged[i]`).
///
/// Returns NaN when there are no pairs or the two lists differ in length.
pub fn mean_iou(requested: &[[f32; 4]], judged: &[[f32; 4]]) -> f64 {
    if requested.is_empty() || requested.len() != judged.len() {
        return f64::NAN;
    }
    requested.iter().zip(judged).map(|(&a, &b)| box_iou(a, b)).sum::<f64>() / requested.len() as f64
}
