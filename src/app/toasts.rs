//! Toasts: short notifications of what the live run did (NaN, gate alert, new best, stage finished, early
//! stop, failure). Notices fade after [`TOAST_SECS`]; errors stay until clicked.

use std::time::{Duration, Instant};

use crate::run::TrainEvent;

/// How long a notice stays.
pub const TOAST_SECS: f64 = 6.0;

/// Seconds of fading at the end of a notice's life.
pub const FADE_SECS: f64 = 1.0;

/// Most toasts shown at once (older ones are dropped).
pub const MAX_TOASTS: usize = 6;

/// One notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Toast {
    /// Unique within the window (used as the widget id).
    pub id: u64,
    /// The text.
    pub text: String,
    /// Errors stay until clicked.
    pub error: bool,
    /// When it appeared.
    pub created: Instant,
}

impl Toast {
    /// Opacity at `now`: 1, then fading to 0 over the last [`FADE_SECS`] (errors never fade).
    pub fn opacity(&self, now: Instant) -> f32 {
        if self.error {
            return 1.0;
        }
        let age = now.saturating_duration_since(self.created).as_secs_f64();
        ((TOAST_SECS - age) / FADE_SECS).clamp(0.0, 1.0) as f32
    }
}

/// The toasts shown.
#[derive(Debug, Default)]
pub struct Toasts {
    /// Newest last.
    pub items: Vec<Toast>,
    next_id: u64,
}

/// The toast a trainer event deserves, if any: (text, error).
pub fn toast_for(event: &TrainEvent, run_id: &str) -> Option<(String, bool)> {
    let text = |what: &str, message: &str| format!("{run_id}: {what} — {message}");
    match event {
        TrainEvent::NanDetected { message, step, .. } => Some((text(&format!("NaN at step {step}"), message), false)),
        TrainEvent::RolledBack { message, step, .. } => {
            Some((text(&format!("rolled back at step {step}"), message), false))
        }
        TrainEvent::GateAlert { message, .. } => Some((text("gate alert", message), false)),
        TrainEvent::BestCheckpoint { checkpoint, .. } => {
            Some((format!("{run_id}: new best checkpoint {checkpoint} — {}", event.message()), false))
        }
        TrainEvent::StageFinished { stage, message, .. } => {
            Some((text(&format!("stage {stage} finished"), message), false))
        }
        TrainEvent::EarlyStopped { stage, message, .. } => {
            Some((text(&format!("stage {stage} stopped early"), message), false))
        }
        TrainEvent::Failed { message, .. } => Some((text("run failed", message), true)),
        _ => None,
    }
}

impl Toasts {
    /// Shows a toast.
    pub fn push(&mut self, text: impl Into<String>, error: bool) {
        self.next_id += 1;
        self.items.push(Toast { id: self.next_id, text: text.into(), error, created: Instant::now() });
        if self.items.len() > MAX_TOASTS {
            // Drop the oldest notice first; errors only when there is nothing else.
            let index = self.items.iter().position(|t| !t.error).unwrap_or(0);
            self.items.remove(index);
        }
    }

    /// Adds the toasts of a batch of trainer events.
    pub fn observe(&mut self, events: &[TrainEvent], run_id: &str) {
        for event in events {
            if let Some((text, error)) = toast_for(event, run_id) {
                self.push(text, error);
            }
        }
    }

    /// Drops expired notices; returns how long until the next one changes (for `request_repaint_after`).
    pub fn expire(&mut self, now: Instant) -> Option<Duration> {
        self.items.retain(|t| t.error || now.saturating_duration_since(t.created).as_secs_f64() < TOAST_SECS);
        self.items.iter().any(|t| !t.error).then(|| Duration::from_millis(50))
    }

    /// Removes a toast (clicked).
    pub fn dismiss(&mut self, id: u64) {
        self.items.retain(|t| t.id != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_expire_and_errors_stay_until_dismissed() {
        let mut toasts = Toasts::default();
        toasts.observe(
            &[
                TrainEvent::Failed { step: 3, message: "out of memory".into() },
                TrainEvent::StageFinished { step: 3, stage: "base".into(), message: "done".into() },
                TrainEvent::Paused { step: 3, message: "p".into() },
            ],
            "run-1",
        );
        assert_eq!(toasts.items.len(), 2, "a pause is no news");
        assert!(toasts.items[0].error && toasts.items[0].text.contains("out of memory"));
        let later = Instant::now() + Duration::from_secs_f64(TOAST_SECS + 0.1);
        assert_eq!(toasts.expire(later), None);
        assert_eq!(toasts.items.len(), 1, "the error stays");
        let id = toasts.items[0].id;
        toasts.dismiss(id);
        assert!(toasts.items.is_empty());
    }

    #[test]
    fn notices_fade_at_the_end() {
        let toast = Toast { id: 1, text: "x".into(), error: false, created: Instant::now() };
        assert_eq!(toast.opacity(toast.created), 1.0);
        let late = toast.created + Duration::from_secs_f64(TOAST_SECS - FADE_SECS / 2.0);
        assert!((toast.opacity(late) - 0.5).abs() < 0.01);
    }
}
