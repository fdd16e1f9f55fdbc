//! Evaluation: sampling, sample grids, the judge, and the maths and decision rules built on them.
//!
//! - [`sampler`]: the Euler sampler with classifier-free guidance and a gate-scale override, and the
//!   fixed-seed [`sampler::EvalSet`]; [`grid`]: sample grids as PNG with the requested boxes drawn.
//! - [`judge`]: training and scoring the judge network ([`crate::model::judge`]).
//! - [`fid`]: the Fréchet distance between Gaussian fits of judge features ([`frechet_distance`],
//!   [`GaussianStats`]), exactly as pytorch-fid defines it, robust to rank-deficient covariances.
//! - [`scores`]: top-k accuracy of the requested class ([`top_k_hits`], [`top_k_all`]) and box IoU
//!   ([`box_iou`], [`mean_iou`]) on judged samples.
//! - [`decisions`]: early stopping ([`EarlyStopping`]), the best checkpoint ([`BestTracker`]), the FID/top-1
//!   Pareto front ([`pareto_front`]) and a plain-words recommendation ([`recommend`]).
//! - [`gates`]: adapter gate alerts ([`GateMonitor`]): collapse, over-activation, sudden convergence.
//!
//! The state machines are serializable so the trainer can store them in a checkpoint's trainer.json and
//! resume exactly.

pub mod compare;
pub mod decisions;
pub mod fid;
pub mod gates;
pub mod grid;
pub mod judge;
pub mod report;
pub mod sampler;
pub mod scores;
pub mod worker;

pub use decisions::{
    pareto_front, recommend, BestEntry, BestTracker, CheckpointRow, EarlyStopDecision, EarlyStopping, Recommendation,
};
pub use fid::{frechet_distance, try_frechet_distance, GaussianStats};
pub use gates::{gate_mean, GateAlert, GateAlertConfig, GateAlertKind, GateMonitor};
pub use scores::{box_iou, mean_iou, top_k_all, top_k_hits};

/// Formats a metric value for a message: 4 significant digits, trailing zeros dropped (`12.3`, `0.9133`,
/// `4`, `1.2e-5` for very small magnitudes).
pub fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let magnitude = v.abs().log10().floor();
    if !(-4.0..15.0).contains(&magnitude) {
        let text = format!("{v:.3e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        return format!("{}e{exponent}", trim_zeros(mantissa));
    }
    let decimals = (3.0 - magnitude).max(0.0) as usize;
    trim_zeros(&format!("{v:.decimals$}")).to_string()
}

/// Drops trailing zeros after a decimal point, and the point itself when nothing follows it.
fn trim_zeros(text: &str) -> &str {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        text
    }
}

/// English ordinal of `n`: `1st`, `2nd`, `3rd`, `4th`, `11th`, `21st`.
pub fn ordinal(n: u32) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}
