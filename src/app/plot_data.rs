//! What the Live plots draw, prepared without drawing: per-pixel envelopes of every shown series (cached by
//! visible x-range and pixel width) and the smoothed loss (extended incrementally as points arrive).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use egui_plot::PlotPoint;

use super::envelope::{envelope, Envelope};
use super::state::XAxis;
use super::store::{RunStore, Series};

/// Which series of which run, drawn how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EnvelopeKey {
    /// The run directory.
    pub run: PathBuf,
    /// Series name; `loss~` is the smoothed loss.
    pub series: String,
    /// X axis.
    pub x_axis: XAxis,
    /// Log10 of the values.
    pub log: bool,
}

/// The name of the smoothed loss series in [`EnvelopeKey::series`].
pub const SMOOTHED_LOSS: &str = "loss~";

struct CachedEnvelope {
    len: usize,
    x_range: (f64, f64),
    width_px: usize,
    envelope: Envelope,
}

/// Debiased EMA of a run's loss.
#[derive(Default)]
struct Smoothed {
    beta: f64,
    source_len: usize,
    ema: f64,
    weight: f64,
    series: Series,
}

/// Envelopes and smoothed series of the Live panel, reused while nothing changes.
#[derive(Default)]
pub struct PlotCache {
    envelopes: HashMap<EnvelopeKey, CachedEnvelope>,
    smoothed: HashMap<PathBuf, Smoothed>,
    /// The x-range the plots showed last frame, when the user zoomed or panned (`None` = everything).
    pub x_range: Option<(f64, f64)>,
    /// Width of the plots' data area last frame, in points.
    pub width_px: usize,
    /// The runs the plots showed last frame: when they change, the plots return to their automatic bounds
    /// (egui keeps a plot's zoom between frames and launches, which would frame another run's values).
    pub shown_runs: Vec<PathBuf>,
    /// Envelopes recomputed this frame (for the benchmark and tests).
    pub recomputed: usize,
}

impl PlotCache {
    /// Updates the smoothed loss of `store` for smoothing `beta` (0 = none).
    pub fn update_smoothed(&mut self, store: &RunStore, beta: f64) {
        let Some(loss) = store.series.get(super::store::names::LOSS) else { return };
        let entry = self.smoothed.entry(store.root.clone()).or_default();
        // A change of beta, or a loss series that got shorter (a resume re-ran steps), starts over.
        if entry.beta != beta || loss.len() < entry.source_len || entry.series.len() > loss.len() {
            *entry = Smoothed { beta, ..Smoothed::default() };
        }
        for i in entry.source_len..loss.len() {
            let value = loss.values[i];
            if value.is_finite() {
                entry.ema = beta * entry.ema + (1.0 - beta) * value;
                entry.weight = beta * entry.weight + (1.0 - beta);
            }
            let smoothed = if entry.weight > 0.0 { entry.ema / entry.weight } else { f64::NAN };
            entry.series.push(loss.steps[i], loss.wall_secs[i], smoothed);
        }
        entry.source_len = loss.len();
        entry.series.refresh_blocks();
    }

    /// The smoothed loss of a run, once [`Self::update_smoothed`] made it.
    pub fn smoothed(&self, run: &Path) -> Option<&Series> {
        self.smoothed.get(run).map(|s| &s.series)
    }

    /// Makes sure the envelope of `key` is ready for the current x-range and width; `store` is the run of
    /// `key.run` (the smoothed loss comes from this cache). Returns false when the run has no such series.
    pub fn prepare(&mut self, key: &EnvelopeKey, store: &RunStore) -> bool {
        let series = if key.series == SMOOTHED_LOSS {
            self.smoothed.get(&key.run).map(|s| &s.series)
        } else {
            store.series.get(&key.series)
        };
        let Some(series) = series else { return false };
        let xs = match key.x_axis {
            XAxis::Step => &series.steps,
            XAxis::WallTime => &series.wall_secs,
        };
        let x_range = self.x_range.unwrap_or_else(|| match (xs.first(), xs.last()) {
            (Some(a), Some(b)) => (*a, *b),
            _ => (0.0, 1.0),
        });
        let width_px = self.width_px.max(100);
        if let Some(cached) = self.envelopes.get(key) {
            if cached.len == series.len() && cached.x_range == x_range && cached.width_px == width_px {
                return true;
            }
        }
        self.recomputed += 1;
        let mut env = envelope(xs, &series.values, &series.blocks, x_range.0, x_range.1, width_px);
        if key.log {
            to_log10(&mut env);
        }
        let len = series.len();
        self.envelopes.insert(key.clone(), CachedEnvelope { len, x_range, width_px, envelope: env });
        true
    }

    /// The envelope prepared for `key`.
    pub fn get(&self, key: &EnvelopeKey) -> Option<&Envelope> {
        self.envelopes.get(key).map(|c| &c.envelope)
    }

    /// Drops everything cached for runs no longer shown.
    pub fn retain_runs(&mut self, runs: &[PathBuf]) {
        self.envelopes.retain(|k, _| runs.contains(&k.run));
        self.smoothed.retain(|k, _| runs.contains(k));
    }
}

/// Log10 of every value; non-positive values cannot be drawn on a log axis and are dropped from the line.
fn to_log10(env: &mut Envelope) {
    env.line.retain(|p| p.y > 0.0);
    for p in &mut env.line {
        p.y = p.y.log10();
    }
    for p in &mut env.nan_markers {
        *p = PlotPoint::new(p.x, if p.y > 0.0 { p.y.log10() } else { 0.0 });
    }
}
