//! Box hygiene: every box that enters a batch goes through [`normalize_box`].

/// Normalises a box `[x0, y0, x1, y1]` (normalised image coordinates) and says what it changed.
///
/// - a box with a non-finite coordinate is dropped;
/// - `x0 > x1` or `y0 > y1` are swapped;
/// - coordinates outside [0, 1] are clipped;
/// - a box with zero width or height after these fixes is dropped.
///
/// Returns the usable box (`None` when dropped) and, when anything was fixed or dropped, one warning that
/// describes the original box and each fix. A valid box comes back unchanged with no warning.
pub fn normalize_box(b: [f32; 4]) -> (Option<[f32; 4]>, Option<String>) {
    let original = format_box(&b);
    if b.iter().any(|v| !v.is_finite()) {
        return (None, Some(format!("box {original} has a non-finite coordinate: dropped")));
    }
    let mut fixes: Vec<String> = Vec::new();
    let [mut x0, mut y0, mut x1, mut y1] = b;
    if x0 > x1 {
        std::mem::swap(&mut x0, &mut x1);
        fixes.push("x0 > x1: swapped".to_string());
    }
    if y0 > y1 {
        std::mem::swap(&mut y0, &mut y1);
        fixes.push("y0 > y1: swapped".to_string());
    }
    let swapped = [x0, y0, x1, y1];
    let clipped = swapped.map(|v| v.clamp(0.0, 1.0));
    if clipped != swapped {
        fixes.push(format!("outside [0, 1]: clipped to {}", format_box(&clipped)));
    }
    let [x0, y0, x1, y1] = clipped;
    if x1 - x0 <= 0.0 || y1 - y0 <= 0.0 {
        fixes.push("zero area: dropped".to_string());
        return (None, Some(format!("box {original}: {}", fixes.join("; "))));
    }
    if fixes.is_empty() {
        (Some(clipped), None)
    } else {
        (Some(clipped), Some(format!("box {original}: {}", fixes.join("; "))))
    }
}

/// `[a, b, c, d]` with 3 decimals.
fn format_box(b: &[f32; 4]) -> String {
    format!("[{:.3}, {:.3}, {:.3}, {:.3}]", b[0], b[1], b[2], b[3])
}
