//! A task's own settings: the `[task]` table of a run config (and `[stages.task]` for per-stage ones),
//! described by a [`Schema`] of typed fields with defaults, ranges and help text. Validation reports every
//! problem with its field path; the window's Setup draws one widget per field from the same schema; the task
//! reads its typed settings with [`Schema::resolve`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::ConfigIssue;

/// What values a setting takes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SettingKind {
    /// A whole number in `[min, max]`.
    Integer {
        /// Used when the table leaves it out.
        default: i64,
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
    },
    /// A number in `[min, max]`.
    Float {
        /// Used when the table leaves it out.
        default: f64,
        /// Smallest allowed.
        min: f64,
        /// Largest allowed.
        max: f64,
    },
    /// true or false.
    Bool {
        /// Used when the table leaves it out.
        default: bool,
    },
    /// A path to a file; empty means "none" (the task says what it does then). Validation checks that a
    /// non-empty path is a file.
    Path,
    /// Free text.
    Text {
        /// Used when the table leaves it out.
        default: String,
    },
    /// One of a few words.
    Choice {
        /// Used when the table leaves it out.
        default: String,
        /// The allowed words.
        options: Vec<String>,
    },
}

/// One setting of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    /// Its key in the `[task]` table.
    pub key: String,
    /// Its label in the window.
    pub label: String,
    /// What it does (hover text, and validation messages' hint).
    pub help: String,
    /// Its type, default and range.
    pub kind: SettingKind,
    /// Whether a stage may override it in its `[stages.task]` table.
    pub per_stage: bool,
}

impl Setting {
    /// The default as a TOML value (a path's default is the empty string: none).
    pub fn default_value(&self) -> toml::Value {
        match &self.kind {
            SettingKind::Integer { default, .. } => toml::Value::Integer(*default),
            SettingKind::Float { default, .. } => toml::Value::Float(*default),
            SettingKind::Bool { default } => toml::Value::Boolean(*default),
            SettingKind::Path => toml::Value::String(String::new()),
            SettingKind::Text { default } => toml::Value::String(default.clone()),
            SettingKind::Choice { default, .. } => toml::Value::String(default.clone()),
        }
    }

    /// What is wrong with `value` for this setting, if anything.
    pub fn check(&self, value: &toml::Value) -> Option<String> {
        match (&self.kind, value) {
            (SettingKind::Integer { min, max, .. }, toml::Value::Integer(v)) => {
                (v < min || v > max).then(|| format!("must be in [{min}, {max}], found {v} — {}", self.help))
            }
            (SettingKind::Integer { .. }, other) => Some(format!("must be a whole number, found {}", describe(other))),
            (SettingKind::Float { min, max, .. }, v) => match as_float(v) {
                Some(x) if !x.is_finite() || x < *min || x > *max => {
                    Some(format!("must be in [{min}, {max}], found {x} — {}", self.help))
                }
                Some(_) => None,
                None => Some(format!("must be a number, found {}", describe(v))),
            },
            (SettingKind::Bool { .. }, toml::Value::Boolean(_)) => None,
            (SettingKind::Bool { .. }, other) => Some(format!("must be true or false, found {}", describe(other))),
            (SettingKind::Path, toml::Value::String(p)) => (!p.is_empty() && !std::path::Path::new(p).is_file())
                .then(|| format!("\"{p}\" is not a file — {}", self.help)),
            (SettingKind::Text { .. }, toml::Value::String(_)) => None,
            (SettingKind::Text { .. }, other) => Some(format!("must be text in quotes, found {}", describe(other))),
            (SettingKind::Path, other) => Some(format!("must be a path in quotes, found {}", describe(other))),
            (SettingKind::Choice { options, .. }, toml::Value::String(s)) => {
                (!options.contains(s)).then(|| format!("must be one of {}, found {s:?}", options.join(", ")))
            }
            (SettingKind::Choice { options, .. }, other) => {
                Some(format!("must be one of {} in quotes, found {}", options.join(", "), describe(other)))
            }
        }
    }
}

fn as_float(value: &toml::Value) -> Option<f64> {
    match value {
        toml::Value::Float(f) => Some(*f),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("the text {s:?}"),
        other => format!("{} `{other}`", other.type_str()),
    }
}

/// Every setting of a task, in the order the window shows them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Schema {
    /// The settings.
    pub settings: Vec<Setting>,
}

impl Schema {
    /// A schema of `settings`.
    pub fn new(settings: Vec<Setting>) -> Self {
        Self { settings }
    }

    /// Adds a whole-number setting.
    pub fn integer(mut self, key: &str, label: &str, default: i64, range: (i64, i64), help: &str) -> Self {
        self.push(key, label, help, SettingKind::Integer { default, min: range.0, max: range.1 });
        self
    }

    /// Adds a number setting.
    pub fn float(mut self, key: &str, label: &str, default: f64, range: (f64, f64), help: &str) -> Self {
        self.push(key, label, help, SettingKind::Float { default, min: range.0, max: range.1 });
        self
    }

    /// Adds a true/false setting.
    pub fn boolean(mut self, key: &str, label: &str, default: bool, help: &str) -> Self {
        self.push(key, label, help, SettingKind::Bool { default });
        self
    }

    /// Adds a file path setting (empty = none).
    pub fn path(mut self, key: &str, label: &str, help: &str) -> Self {
        self.push(key, label, help, SettingKind::Path);
        self
    }

    /// Adds a free-text setting.
    pub fn text(mut self, key: &str, label: &str, default: &str, help: &str) -> Self {
        self.push(key, label, help, SettingKind::Text { default: default.to_string() });
        self
    }

    /// Adds a choice among `options`.
    pub fn choice(mut self, key: &str, label: &str, default: &str, options: &[&str], help: &str) -> Self {
        let options = options.iter().map(|s| s.to_string()).collect();
        self.push(key, label, help, SettingKind::Choice { default: default.to_string(), options });
        self
    }

    /// Marks the setting added last as one a stage may override (`[stages.task]`).
    pub fn per_stage(mut self) -> Self {
        if let Some(last) = self.settings.last_mut() {
            last.per_stage = true;
        }
        self
    }

    fn push(&mut self, key: &str, label: &str, help: &str, kind: SettingKind) {
        self.settings.push(Setting {
            key: key.to_string(),
            label: label.to_string(),
            help: help.to_string(),
            kind,
            per_stage: false,
        });
    }

    /// The setting called `key`.
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.settings.iter().find(|s| s.key == key)
    }

    /// Every problem of `table` (the `[task]` table at `path`, or a stage's `[stages.task]` when
    /// `stage_level`): unknown keys, wrong types, values out of range, and — at stage level — keys that
    /// are not per-stage settings.
    pub fn check(&self, table: &toml::Table, path: &str, stage_level: bool) -> Vec<ConfigIssue> {
        let mut issues = Vec::new();
        let mut keys: Vec<&String> = table.keys().collect();
        keys.sort();
        for key in keys {
            if !stage_level && key == "kind" {
                continue;
            }
            let field = format!("{path}.{key}");
            let Some(setting) = self.get(key) else {
                let known: Vec<&str> =
                    self.settings.iter().filter(|s| !stage_level || s.per_stage).map(|s| s.key.as_str()).collect();
                issues.push(ConfigIssue {
                    path: field,
                    message: format!(
                        "unknown setting — {}",
                        if known.is_empty() {
                            "this task has none here".to_string()
                        } else {
                            format!("known: {}", known.join(", "))
                        }
                    ),
                });
                continue;
            };
            if stage_level && !setting.per_stage {
                issues.push(ConfigIssue {
                    path: field,
                    message: "is a setting of the whole run — move it to the [task] table".to_string(),
                });
                continue;
            }
            if let Some(message) = setting.check(&table[key]) {
                issues.push(ConfigIssue { path: field, message });
            }
        }
        issues
    }

    /// Every setting at its default, as a table.
    pub fn defaults(&self) -> toml::Table {
        self.settings.iter().map(|s| (s.key.clone(), s.default_value())).collect()
    }

    /// The typed settings: defaults, overridden by `run` (the `[task]` table), then by `stage` (a stage's
    /// `[stages.task]`). The `kind` key is left out. Values are not range-checked here (validation does it).
    pub fn resolve<T: DeserializeOwned>(&self, run: &toml::Table, stage: Option<&toml::Table>) -> anyhow::Result<T> {
        let mut table = self.defaults();
        for (key, value) in run.iter().chain(stage.into_iter().flat_map(|s| s.iter())) {
            if key != "kind" {
                table.insert(key.clone(), value.clone());
            }
        }
        // A float setting written as an integer (`rate = 1`) is still a float.
        for setting in &self.settings {
            if let (SettingKind::Float { .. }, Some(toml::Value::Integer(i))) = (&setting.kind, table.get(&setting.key))
            {
                let f = *i as f64;
                table.insert(setting.key.clone(), toml::Value::Float(f));
            }
        }
        toml::Value::Table(table).try_into().map_err(|e| anyhow::anyhow!("task settings: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::default()
            .integer("digits", "Digits", 2, (1, 6), "digits of each operand")
            .per_stage()
            .float("rate", "Rate", 0.5, (0.0, 1.0), "a fraction")
            .path("text", "Text file", "a UTF-8 file")
            .choice("mode", "Mode", "a", &["a", "b"], "which")
    }

    #[test]
    fn every_problem_is_named_with_its_path() {
        let table: toml::Table =
            toml::from_str("kind = \"x\"\ndigits = 9\nrate = \"high\"\nmode = \"c\"\ncolour = 1").unwrap();
        let issues = schema().check(&table, "task", false);
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, vec!["task.colour", "task.digits", "task.mode", "task.rate"], "{issues:?}");
        assert!(issues[1].message.contains("[1, 6]"), "{}", issues[1].message);
        let stage: toml::Table = toml::from_str("rate = 0.1\ndigits = 1").unwrap();
        let issues = schema().check(&stage, "stages[1].task", true);
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].path, "stages[1].task.rate");
    }

    #[test]
    fn resolve_fills_defaults_and_applies_stage_overrides() {
        #[derive(Deserialize)]
        struct S {
            digits: i64,
            rate: f64,
            text: String,
            mode: String,
        }
        let run: toml::Table = toml::from_str("kind = \"x\"\nrate = 1").unwrap();
        let stage: toml::Table = toml::from_str("digits = 3").unwrap();
        let s: S = schema().resolve(&run, Some(&stage)).unwrap();
        assert_eq!((s.digits, s.rate, s.text.as_str(), s.mode.as_str()), (3, 1.0, "", "a"));
    }
}
