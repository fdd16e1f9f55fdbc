//! The learning-rate schedule of a stage: linear warmup, then constant / cosine / linear decay.

use super::{ScheduleKind, StageConfig};

impl StageConfig {
    /// The learning rate of step `step_in_stage` (0-based, counted from the start of this stage).
    ///
    /// * Warmup, for `s < warmup_steps`: `lr × (s + 1) / warmup_steps` — rises linearly from `lr / warmup`
    ///   and reaches `lr` on the first step after warmup.
    /// * After warmup, with progress `p = (s − warmup) / max(1, steps − warmup − 1)` clamped to `[0, 1]`:
    ///   * constant: `lr`;
    ///   * cosine: `lr × (floor + (1 − floor) × ½ (1 + cos πp))`;
    ///   * linear: `lr × (floor + (1 − floor) × (1 − p))`.
    ///
    /// So the first step after warmup runs at exactly `lr` and the last step of the stage (`steps − 1`) at
    /// exactly `floor × lr` (cosine, linear) — when at least two steps follow warmup; a single step after
    /// warmup runs at `lr`. Steps past the end stay at the final rate. A pure function of
    /// the step: a resumed run recomputes the same rate.
    pub fn lr_at(&self, step_in_stage: u64) -> f64 {
        let warmup = self.schedule.warmup_steps;
        let s = step_in_stage;
        if s < warmup {
            return self.lr * (s + 1) as f64 / warmup as f64;
        }
        let span = self.steps.saturating_sub(warmup).saturating_sub(1).max(1);
        let p = ((s - warmup) as f64 / span as f64).clamp(0.0, 1.0);
        let floor = self.schedule.floor;
        match self.schedule.kind {
            ScheduleKind::Constant => self.lr,
            ScheduleKind::Cosine => self.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())),
            ScheduleKind::Linear => self.lr * (floor + (1.0 - floor) * (1.0 - p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ScheduleConfig, ScheduleKind, StageConfig};

    fn stage(kind: ScheduleKind, steps: u64, warmup: u64, floor: f64) -> StageConfig {
        StageConfig {
            steps,
            lr: 1.0,
            schedule: ScheduleConfig { kind, warmup_steps: warmup, floor },
            ..StageConfig::default()
        }
    }

    #[test]
    fn cosine_ends_exactly_at_floor() {
        let s = stage(ScheduleKind::Cosine, 100, 10, 0.1);
        assert!((s.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(99) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(1000) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn one_step_stage_runs_at_peak() {
        let s = stage(ScheduleKind::Cosine, 1, 0, 0.0);
        assert_eq!(s.lr_at(0), 1.0);
    }
}
