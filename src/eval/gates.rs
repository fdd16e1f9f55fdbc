//! Adapter gate statistics and alerts: collapse, over-activation and sudden convergence.
//!
//! Each alert kind fires once when its condition starts to hold and stays silent while it keeps holding; it
//! can fire again after the condition has cleared. The monitor is serializable so a resumed run neither
//! repeats nor forgets an alert.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::fmt_value;

/// Thresholds of the gate alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateAlertConfig {
    /// Collapse: the gate mean (mean |gate|) is below this… (default 1e-3)
    pub collapse_threshold: f64,
    /// …after at least this many adapter-training steps (default 200).
    pub collapse_after_steps: u64,
    /// Over-activation: any |gate| above this (default 1.0).
    pub over_activation: f64,
    /// Sudden convergence looks at the last this many logged points (default 10; below 2 disables it).
    pub jump_window: usize,
    /// Sudden convergence: the largest change of the gate mean between consecutive logged points within the
    /// window exceeds this (default 0.05).
    pub jump_threshold: f64,
}

impl Default for GateAlertConfig {
    fn default() -> Self {
        Self {
            collapse_threshold: 1e-3,
            collapse_after_steps: 200,
            over_activation: 1.0,
            jump_window: 10,
            jump_threshold: 0.05,
        }
    }
}

/// Which gate alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateAlertKind {
    /// The gates stay near zero although the adapter trains: layouts have no effect.
    Collapse,
    /// A gate's magnitude exceeds the limit (or is not finite): the adapter may overpower the base model.
    OverActivation,
    /// The gate mean jumped within a few logged points (informational: the adapter suddenly "switched on").
    SuddenConvergence,
}

/// One alert, for a `gate_alert` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateAlert {
    /// Which alert.
    pub kind: GateAlertKind,
    /// Global step at which it fired.
    pub step: u64,
    /// Human-readable explanation.
    pub message: String,
}

/// Watches the adapter gates at every logged step and raises [`GateAlert`]s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateMonitor {
    config: GateAlertConfig,
    /// `(step, gate mean)` of the last `jump_window` logged points with finite gates.
    history: VecDeque<(u64, f64)>,
    collapse_active: bool,
    over_active: bool,
    jump_active: bool,
}

impl GateMonitor {
    /// A monitor with no history.
    pub fn new(config: GateAlertConfig) -> Self {
        Self { config, history: VecDeque::new(), collapse_active: false, over_active: false, jump_active: false }
    }

    /// The thresholds in use.
    pub fn config(&self) -> &GateAlertConfig {
        &self.config
    }

    /// Records the gates of a logged step and returns the alerts that start firing now.
    ///
    /// `adapter_steps_trained` counts the steps in which the adapter was trained so far (collapse is only
    /// judged after `collapse_after_steps` of them). `gates` are the raw per-block gates; an empty slice (no
    /// adapter) yields no alerts and leaves the state untouched.
    pub fn observe(&mut self, step: u64, adapter_steps_trained: u64, gates: &[f64]) -> Vec<GateAlert> {
        let mut alerts = Vec::new();
        if gates.is_empty() {
            return alerts;
        }
        let config = &self.config;
        let all_finite = gates.iter().all(|g| g.is_finite());
        let mean = gate_mean(gates);

        // Over-activation: any |gate| above the limit, or not finite.
        let over: Vec<usize> =
            (0..gates.len()).filter(|&i| gates[i].is_nan() || gates[i].abs() > config.over_activation).collect();
        if !over.is_empty() && !self.over_active {
            let message = match over.as_slice() {
                [i] => format!("gate of block {i} ({}) is", fmt_value(gates[*i])),
                _ => {
                    let list = over.iter().map(|&i| format!("{i} ({})", fmt_value(gates[i]))).collect::<Vec<_>>();
                    format!("gates of blocks {} are", list.join(", "))
                }
            };
            alerts.push(GateAlert {
                kind: GateAlertKind::OverActivation,
                step,
                message: format!(
                    "{message} beyond |gate| ≤ {}: the adapter may overpower the base model",
                    fmt_value(config.over_activation)
                ),
            });
        }
        self.over_active = !over.is_empty();

        // Collapse: the gate mean stays below the threshold although the adapter has trained long enough.
        let collapsed =
            all_finite && adapter_steps_trained >= config.collapse_after_steps && mean < config.collapse_threshold;
        if collapsed && !self.collapse_active {
            alerts.push(GateAlert {
                kind: GateAlertKind::Collapse,
                step,
                message: format!(
                    "gate mean {} < {} after {adapter_steps_trained} adapter steps: the gates have collapsed \
                     toward zero, so layouts have little effect",
                    fmt_value(mean),
                    fmt_value(config.collapse_threshold)
                ),
            });
        }
        self.collapse_active = collapsed;

        // Sudden convergence: the largest consecutive jump of the gate mean within the window.
        if all_finite {
            self.history.push_back((step, mean));
        }
        while self.history.len() > config.jump_window.max(1) {
            self.history.pop_front();
        }
        let jump = self
            .history
            .iter()
            .zip(self.history.iter().skip(1))
            .map(|(a, b)| (a, b, (b.1 - a.1).abs()))
            .max_by(|x, y| x.2.total_cmp(&y.2));
        let jumped = config.jump_window >= 2 && jump.is_some_and(|(_, _, d)| d > config.jump_threshold);
        if let Some(((s0, m0), (s1, m1), d)) = jump.filter(|_| jumped && !self.jump_active) {
            alerts.push(GateAlert {
                kind: GateAlertKind::SuddenConvergence,
                step,
                message: format!(
                    "gate mean jumped by {} ({} → {}) between steps {s0} and {s1}: the adapter may have \
                     suddenly converged (informational)",
                    fmt_value(d),
                    fmt_value(*m0),
                    fmt_value(*m1)
                ),
            });
        }
        self.jump_active = jumped;
        alerts
    }

    /// Whether an alert of this kind has fired and its condition still holds.
    pub fn is_active(&self, kind: GateAlertKind) -> bool {
        match kind {
            GateAlertKind::Collapse => self.collapse_active,
            GateAlertKind::OverActivation => self.over_active,
            GateAlertKind::SuddenConvergence => self.jump_active,
        }
    }
}

impl Default for GateMonitor {
    fn default() -> Self {
        Self::new(GateAlertConfig::default())
    }
}

/// Mean |gate| over the blocks (0 without adapter), as in metrics.jsonl's `gate_mean`.
pub fn gate_mean(gates: &[f64]) -> f64 {
    if gates.is_empty() {
        0.0
    } else {
        gates.iter().map(|g| g.abs()).sum::<f64>() / gates.len() as f64
    }
}
