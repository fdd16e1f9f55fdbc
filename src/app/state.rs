//! The window's state: what is persisted between launches ([`Persisted`]) and the panels ([`Panel`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The panels of the central area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Panel {
    /// Edit the run config and its stages.
    #[default]
    Setup,
    /// Linked plots of the viewed runs.
    Live,
    /// Every checkpoint of a run.
    Checkpoints,
    /// Checkpoints side by side.
    Compare,
    /// The run's log.
    Logs,
    /// CPU, memory and GPU readings.
    System,
    /// One batch through the model before a run.
    Preflight,
}

impl Panel {
    /// Every panel, in tab order.
    pub const ALL: [Panel; 7] =
        [Self::Setup, Self::Live, Self::Checkpoints, Self::Compare, Self::Logs, Self::System, Self::Preflight];

    /// The tab's title.
    pub fn title(self) -> &'static str {
        match self {
            Self::Setup => "Setup",
            Self::Live => "Live",
            Self::Checkpoints => "Checkpoints",
            Self::Compare => "Compare",
            Self::Logs => "Logs",
            Self::System => "System",
            Self::Preflight => "Preflight",
        }
    }
}

/// X axis of the Live plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum XAxis {
    /// Global step.
    #[default]
    Step,
    /// Training seconds.
    WallTime,
}

/// Settings of the Live panel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LiveSettings {
    /// EMA smoothing of the loss, in [0, 0.999]: the β of `ema = β·ema + (1-β)·loss`.
    pub smoothing: f64,
    /// Log-scale y axes.
    pub log_scale: bool,
    /// Step or wall-time x axis.
    pub x_axis: XAxis,
    /// Draw event markers.
    pub show_markers: bool,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self { smoothing: 0.9, log_scale: false, x_axis: XAxis::Step, show_markers: true }
    }
}

/// Everything the window remembers between launches (eframe storage). Runtime handles live elsewhere.
/// `#[serde(default)]`: a state saved by an older version still loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    /// The panel shown in the central area.
    pub panel: Panel,
    /// Dark (true) or light theme.
    pub dark_mode: bool,
    /// The run viewed last (its directory).
    pub last_opened_run: Option<PathBuf>,
    /// Run directories opened from outside the runs folder.
    pub extra_runs: Vec<PathBuf>,
    /// Live panel settings.
    pub live: LiveSettings,
}

impl Default for Persisted {
    fn default() -> Self {
        Self {
            panel: Panel::Setup,
            dark_mode: true,
            last_opened_run: None,
            extra_runs: Vec::new(),
            live: LiveSettings::default(),
        }
    }
}

/// The key of [`Persisted`] in eframe's storage.
pub const STORAGE_KEY: &str = "wick-window";
