//! Per-pixel min/max envelopes of long series, so a plot gets a few thousand points however long the
//! history is, and no spike or non-finite value disappears at any zoom.
//!
//! A series keeps every point (`xs` ascending, `ys` with `NaN` for non-finite values). For a visible x-range
//! and a width in pixels, [`envelope`] keeps, per pixel column, the smallest and the largest finite value
//! (in their original order and at their own x), and reports every column holding a `NaN` as a marker.
//! Columns are summarised with a block pyramid ([`BlockSummary`]) so a million-point series aggregates in
//! well under a millisecond.

use egui_plot::PlotPoint;

/// Points per block of the summary level.
const BLOCK: usize = 32;

/// Min/max of one block of [`BLOCK`] points, precomputed so wide pixel columns skip the points inside.
#[derive(Debug, Clone, Copy)]
pub struct BlockSummary {
    /// Index of the smallest finite value (usize::MAX when the block has none).
    pub min_index: usize,
    /// Index of the largest finite value (usize::MAX when the block has none).
    pub max_index: usize,
    /// Index of the first NaN in the block (usize::MAX when none).
    pub nan_index: usize,
}

/// The drawable summary of a series over a visible x-range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Envelope {
    /// The line: for each pixel column its min and max finite points, in index order.
    pub line: Vec<PlotPoint>,
    /// Non-finite values: one marker per pixel column that holds any, at the x of the first one and the y of
    /// the nearest finite value before it (0 when there is none).
    pub nan_markers: Vec<PlotPoint>,
}

/// Summaries of consecutive [`BLOCK`]-point blocks of `ys` (the last block may be partial).
pub fn summarize_blocks(ys: &[f64]) -> Vec<BlockSummary> {
    ys.chunks(BLOCK).enumerate().map(|(b, chunk)| summarize(chunk, b * BLOCK)).collect()
}

/// Extends `blocks` (summaries of a prefix of `ys`) to cover all of `ys`, redoing the last partial block.
pub fn extend_blocks(blocks: &mut Vec<BlockSummary>, ys: &[f64]) {
    let complete = blocks.len().saturating_sub(1);
    blocks.truncate(complete);
    let start = complete * BLOCK;
    if start < ys.len() {
        for (b, chunk) in ys[start..].chunks(BLOCK).enumerate() {
            blocks.push(summarize(chunk, start + b * BLOCK));
        }
    }
}

fn summarize(chunk: &[f64], offset: usize) -> BlockSummary {
    let mut summary = BlockSummary { min_index: usize::MAX, max_index: usize::MAX, nan_index: usize::MAX };
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (i, &y) in chunk.iter().enumerate() {
        if y.is_nan() {
            if summary.nan_index == usize::MAX {
                summary.nan_index = offset + i;
            }
            continue;
        }
        if y < lo {
            lo = y;
            summary.min_index = offset + i;
        }
        if y > hi {
            hi = y;
            summary.max_index = offset + i;
        }
    }
    summary
}

/// Running min/max/NaN of one pixel column.
#[derive(Clone, Copy)]
struct Column {
    lo: f64,
    min_index: usize,
    hi: f64,
    max_index: usize,
    nan_index: usize,
}

impl Column {
    const EMPTY: Column = Column {
        lo: f64::INFINITY,
        min_index: usize::MAX,
        hi: f64::NEG_INFINITY,
        max_index: usize::MAX,
        nan_index: usize::MAX,
    };

    #[inline]
    fn take_point(&mut self, i: usize, y: f64) {
        if y.is_nan() {
            self.nan_index = self.nan_index.min(i);
            return;
        }
        // Selects rather than branches: on noisy data the comparisons are unpredictable.
        let first = self.min_index == usize::MAX;
        let lower = (y < self.lo) | first;
        let higher = (y > self.hi) | first;
        self.lo = if lower { y } else { self.lo };
        self.min_index = if lower { i } else { self.min_index };
        self.hi = if higher { y } else { self.hi };
        self.max_index = if higher { i } else { self.max_index };
    }

    #[inline]
    fn take_block(&mut self, ys: &[f64], block: &BlockSummary) {
        if block.min_index != usize::MAX {
            self.take_point(block.min_index, ys[block.min_index]);
            self.take_point(block.max_index, ys[block.max_index]);
        }
        if block.nan_index != usize::MAX {
            self.nan_index = self.nan_index.min(block.nan_index);
        }
    }

    /// Takes points `from..to`, whole blocks where they fit.
    fn take_range(&mut self, ys: &[f64], blocks: &[BlockSummary], from: usize, to: usize) {
        let mut j = from;
        if !blocks.is_empty() {
            let aligned = from.next_multiple_of(BLOCK).min(to);
            self.scan(ys, j, aligned);
            j = aligned;
            while j + BLOCK <= to {
                self.take_block(ys, &blocks[j / BLOCK]);
                j += BLOCK;
            }
        }
        self.scan(ys, j, to);
    }

    /// Takes every point of `from..to`, in local variables (a tight loop).
    fn scan(&mut self, ys: &[f64], from: usize, to: usize) {
        if from >= to {
            return;
        }
        let (mut lo, mut lo_i, mut hi, mut hi_i) = (self.lo, self.min_index, self.hi, self.max_index);
        let mut nan_i = usize::MAX;
        for (i, &y) in (from..to).zip(&ys[from..to]) {
            if y.is_nan() {
                nan_i = nan_i.min(i);
                continue;
            }
            if y < lo || lo_i == usize::MAX {
                lo = y;
                lo_i = i;
            }
            if y > hi || hi_i == usize::MAX {
                hi = y;
                hi_i = i;
            }
        }
        (self.lo, self.min_index, self.hi, self.max_index) = (lo, lo_i, hi, hi_i);
        self.nan_index = self.nan_index.min(nan_i);
    }
}

/// The envelope of the points of (`xs`, `ys`) within `x_min..=x_max` (plus one point on each side, so the line
/// reaches the edges) for a plot `width_px` pixels wide. `xs` must be ascending; `blocks` must summarise `ys`
/// (see [`summarize_blocks`]), or be empty to scan every point. Where the range holds at most two points per
/// pixel, every point is kept.
pub fn envelope(xs: &[f64], ys: &[f64], blocks: &[BlockSummary], x_min: f64, x_max: f64, width_px: usize) -> Envelope {
    let n = xs.len().min(ys.len());
    let mut out = Envelope::default();
    if n == 0 {
        return out;
    }
    let width_px = width_px.max(1);
    let first = xs[..n].partition_point(|&x| x < x_min).saturating_sub(1);
    let end = (xs[..n].partition_point(|&x| x <= x_max) + 1).min(n);
    if first >= end {
        return out;
    }
    let mut last_finite: Option<f64> = ys[..first].iter().rev().find(|y| !y.is_nan()).copied();
    let push_nan = |out: &mut Envelope, i: usize, last_finite: Option<f64>| {
        out.nan_markers.push(PlotPoint::new(xs[i], last_finite.unwrap_or(0.0)));
    };

    if end - first <= 2 * width_px || x_max.partial_cmp(&x_min) != Some(std::cmp::Ordering::Greater) {
        for i in first..end {
            if ys[i].is_nan() {
                push_nan(&mut out, i, last_finite);
            } else {
                out.line.push(PlotPoint::new(xs[i], ys[i]));
                last_finite = Some(ys[i]);
            }
        }
        return out;
    }

    // Pixel column c covers x in [x_min + c·w, x_min + (c+1)·w); the points outside the range get their own
    // columns (before and after), so the line still runs off the edges.
    let column_width = (x_max - x_min) / width_px as f64;
    out.line.reserve(2 * width_px + 4);
    let mut i = first;
    // Points before the range: the single point at `first` (at most one, by construction).
    while i < end {
        // The column of point i and the first index past that column.
        let x = xs[i];
        let column_end = if x < x_min {
            xs[..end].partition_point(|&v| v < x_min)
        } else if x > x_max {
            end
        } else {
            let c = ((x - x_min) / column_width).floor();
            let bound = x_min + (c + 1.0) * column_width;
            gallop(xs, i, end, bound).max(i + 1)
        };
        let mut column = Column::EMPTY;
        column.take_range(ys, blocks, i, column_end);
        let (a, b) = (column.min_index, column.max_index);
        let nan_before_values = column.nan_index != usize::MAX && (a == usize::MAX || column.nan_index < a.min(b));
        if nan_before_values {
            push_nan(&mut out, column.nan_index, last_finite);
        }
        if a != usize::MAX {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            out.line.push(PlotPoint::new(xs[lo], ys[lo]));
            if hi != lo {
                out.line.push(PlotPoint::new(xs[hi], ys[hi]));
            }
            last_finite = Some(ys[hi]);
        }
        if column.nan_index != usize::MAX && !nan_before_values {
            push_nan(&mut out, column.nan_index, last_finite);
        }
        i = column_end;
    }
    out
}

/// The first index in `from..end` whose x is ≥ `bound` (`end` when none), given `xs[from] < bound`: an
/// exponential search from `from`, so it touches only memory near the column (a plain binary search over the
/// whole series costs a cache miss per step, per column).
fn gallop(xs: &[f64], from: usize, end: usize, bound: f64) -> usize {
    let (mut lo, mut step) = (from, 1);
    while lo + step < end && xs[lo + step] < bound {
        lo += step;
        step *= 2;
    }
    let hi = (lo + step).min(end);
    lo + xs[lo..hi].partition_point(|&v| v < bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(n: usize) -> (Vec<f64>, Vec<f64>) {
        let xs: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let ys: Vec<f64> = (0..n).map(|i| 1.0 + 0.01 * ((i as f64) * 0.001).sin()).collect();
        (xs, ys)
    }

    #[test]
    fn a_single_spike_survives_aggregation_to_100_px() {
        let (xs, mut ys) = series(1_000_000);
        ys[523_457] = 1e6;
        for blocks in [Vec::new(), summarize_blocks(&ys)] {
            let env = envelope(&xs, &ys, &blocks, 0.0, 999_999.0, 100);
            assert!(env.line.len() <= 2 * 100 + 4, "{} points", env.line.len());
            assert!(env.line.iter().any(|p| p.y == 1e6 && p.x == 523_457.0), "the spike is gone");
            assert!(env.nan_markers.is_empty());
        }
    }

    #[test]
    fn a_nan_survives_aggregation_to_100_px() {
        let (xs, mut ys) = series(1_000_000);
        ys[77_777] = f64::NAN;
        for blocks in [Vec::new(), summarize_blocks(&ys)] {
            let env = envelope(&xs, &ys, &blocks, 0.0, 999_999.0, 100);
            assert_eq!(env.nan_markers.len(), 1);
            assert_eq!(env.nan_markers[0].x, 77_777.0);
            assert!(env.nan_markers[0].y.is_finite());
            assert!(env.line.iter().all(|p| p.y.is_finite()));
        }
    }

    #[test]
    fn blocks_and_full_scan_agree_and_zoom_keeps_edges() {
        let (xs, mut ys) = series(100_000);
        ys[5_000] = -3.0;
        ys[60_000] = f64::NAN;
        let mut blocks = summarize_blocks(&ys[..50_000]);
        extend_blocks(&mut blocks, &ys);
        assert_eq!(blocks.len(), summarize_blocks(&ys).len());
        let a = envelope(&xs, &ys, &[], 1_000.0, 80_000.0, 300);
        let b = envelope(&xs, &ys, &blocks, 1_000.0, 80_000.0, 300);
        assert_eq!(a, b);
        assert!(b.line.iter().any(|p| p.y == -3.0));
        assert_eq!(b.nan_markers.len(), 1);
        // One point on each side of the visible range.
        assert_eq!(b.line.first().map(|p| p.x), Some(999.0));
        assert_eq!(b.line.last().map(|p| p.x), Some(80_001.0));
    }

    #[test]
    fn short_series_are_kept_whole() {
        let xs = [1.0, 2.0, 3.0];
        let ys = [0.5, f64::NAN, 0.25];
        let env = envelope(&xs, &ys, &[], 0.0, 10.0, 100);
        assert_eq!(env.line.len(), 2);
        assert_eq!(env.nan_markers, vec![PlotPoint::new(2.0, 0.5)]);
    }
}
