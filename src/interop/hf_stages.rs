//! `wick stages`: a curriculum trained as several Hugging Face Trainer runs, one output directory per stage,
//! each meant to continue the one before with `resume_from_checkpoint`. The check reads each stage's
//! `trainer_state.json` and says, in words, where a stage restarted the step counter (optimizer and scheduler
//! not restored), resumed from an earlier checkpoint than the previous stage's end (steps trained twice),
//! restarted its learning-rate schedule, or trained no step at all (`max_steps` is the global step to stop
//! at, so a "relative" value not past the previous end trains nothing).
//!
//! A resumed Trainer carries the whole earlier `log_history` in its own state file: the entries a stage
//! shares with the previous stage's history are the carried ones; the rest are its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::hf::{checkpoints, HfRun, LogValue};

/// A `log_history` entry.
type Entry = BTreeMap<String, LogValue>;

/// One stage of the curriculum as found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpan {
    /// The stage's name (its directory's).
    pub name: String,
    /// Its output directory.
    pub dir: PathBuf,
    /// The global step it started from (`None` when it holds no state).
    pub start_step: Option<u64>,
    /// The global step it ended at.
    pub end_step: Option<u64>,
    /// Steps it trained (`end - start`).
    pub steps_trained: Option<u64>,
}

/// The stages and every problem found, in words.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StagesCheck {
    /// The stages, in the given order.
    pub stages: Vec<StageSpan>,
    /// What is wrong; none when the curriculum continued as meant.
    pub problems: Vec<String>,
}

fn number(entry: &Entry, key: &str) -> Option<f64> {
    match entry.get(key) {
        Some(LogValue::Number(v)) => Some(*v),
        _ => None,
    }
}

/// Entries logged during training (the end-of-training summary, logged after the last save, aside).
fn training_entries(history: &[Entry]) -> Vec<&Entry> {
    history.iter().filter(|e| number(e, "step").is_some() && !e.contains_key("train_runtime")).collect()
}

/// Two entries are the same log line: same keys, same numbers (NaN equal to NaN).
fn same_entry(a: &Entry, b: &Entry) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, va), (kb, vb))| {
            ka == kb
                && match (va, vb) {
                    (LogValue::Number(x), LogValue::Number(y)) => x.to_bits() == y.to_bits() || x == y,
                    (LogValue::Other(_), LogValue::Other(_)) => true,
                    _ => false,
                }
        })
}

/// The last learning rate logged among `entries`.
fn last_lr(entries: &[&Entry]) -> Option<(u64, f64)> {
    entries.iter().rev().find_map(|e| Some((number(e, "step")? as u64, number(e, "learning_rate")?)))
}

/// The checkpoint of `dir` to resume from after it ended at `end`: `checkpoint-<end>` when saved, else the
/// newest one.
fn resume_hint(name: &str, dir: &Path, end: u64) -> String {
    let saved = checkpoints(dir);
    match saved.iter().find(|c| c.step == end).or(saved.last()) {
        Some(checkpoint) => format!("resume from {name}/checkpoint-{}", checkpoint.step),
        None => format!("{name} saved no checkpoint to resume from: save one at its end (save_strategy)"),
    }
}

/// A stage's name: its directory's last component.
fn stage_name(dir: &Path) -> String {
    dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// Checks the stages in `dirs`, in order.
pub fn check_stages(dirs: &[PathBuf]) -> StagesCheck {
    let mut check = StagesCheck::default();
    // The previous stage that holds a state: its name, directory, end step and training entries.
    let mut previous: Option<(String, PathBuf, u64, Vec<Entry>)> = None;
    for dir in dirs {
        let name = stage_name(dir);
        let run = match HfRun::open(dir) {
            Ok(run) => run,
            Err(e) => {
                check.problems.push(format!(
                    "{name} holds no readable trainer state ({e:#}): it trained no step, or saved nothing"
                ));
                check.stages.push(StageSpan {
                    name,
                    dir: dir.clone(),
                    start_step: None,
                    end_step: None,
                    steps_trained: None,
                });
                continue;
            }
        };
        let entries = training_entries(&run.state.log_history);
        let last_logged = entries.iter().filter_map(|e| number(e, "step")).fold(0.0f64, f64::max) as u64;
        let end = run.state.global_step.unwrap_or(last_logged);
        let start;
        match &previous {
            None => start = 0,
            Some((prev_name, prev_dir, prev_end, prev_entries)) => {
                let carried = entries.iter().zip(prev_entries).take_while(|(a, b)| same_entry(a, b)).count();
                let own = &entries[carried..];
                let hint = resume_hint(prev_name, prev_dir, *prev_end);
                if carried == 0 && !prev_entries.is_empty() {
                    start = 0;
                    check.problems.push(format!(
                        "{name} starts at global step 0 after {prev_name} ended at {prev_end}: the optimizer, \
                         scheduler and step counter were not restored — {hint}"
                    ));
                } else if carried < prev_entries.len() {
                    let resumed_at = number(entries[carried - 1], "step").unwrap_or(0.0) as u64;
                    start = resumed_at;
                    check.problems.push(format!(
                        "{name} resumed at global step {resumed_at}, before {prev_name} ended at {prev_end}: steps \
                         {}–{prev_end} were trained twice — {hint}",
                        resumed_at + 1
                    ));
                } else {
                    start = *prev_end;
                }
                if end <= start {
                    let max_steps = run.state.max_steps.map_or_else(String::new, |m| format!(" with max_steps {m}"));
                    check.problems.push(format!(
                        "{name} trained no step: it resumed at global step {start}{max_steps}. max_steps is the \
                         global step to stop at, not the stage's length: for N more steps set it to {start} + N"
                    ));
                }
                let prev_refs: Vec<&Entry> = prev_entries.iter().collect();
                let bound = prev_lr_bound(&prev_refs);
                let rise = own.iter().find_map(|e| {
                    let lr = number(e, "learning_rate")?;
                    (lr > bound).then_some((number(e, "step")? as u64, lr))
                });
                if let (Some((prev_step, prev_lr)), Some((step, lr))) = (last_lr(&prev_refs), rise) {
                    let cause = if start == 0 {
                        format!("its schedule restarted (scheduler.pt not restored) — {hint}")
                    } else {
                        let max_steps = run.state.max_steps.map_or_else(String::new, |m| format!(" ({m})"));
                        format!(
                            "the scheduler was restored, but a decaying schedule is a function of max_steps{max_steps}, \
                             which changed, so the decay began again from a higher rate — keep one max_steps for \
                             the whole curriculum, or give later stages a constant schedule"
                        )
                    };
                    check.problems.push(format!(
                        "{name}'s learning rate rises to {lr:.3e} at global step {step}, above {prev_name}'s last \
                         ({prev_lr:.3e} at step {prev_step}): {cause}"
                    ));
                }
            }
        }
        check.stages.push(StageSpan {
            name: name.clone(),
            dir: dir.clone(),
            start_step: Some(start),
            end_step: Some(end),
            steps_trained: Some(end.saturating_sub(start)),
        });
        previous = Some((name, dir.clone(), end, entries.into_iter().cloned().collect()));
    }
    check
}

/// The highest learning rate a continuing schedule may log after the previous stage: its last one (decay and
/// constant schedules never rise after warm-up), with room for float rounding.
fn prev_lr_bound(prev: &[&Entry]) -> f64 {
    last_lr(prev).map_or(f64::INFINITY, |(_, lr)| lr * (1.0 + 1e-6) + 1e-15)
}

/// The table and the problems, as `wick stages` prints them.
pub fn format_stages(check: &StagesCheck) -> String {
    let show = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let width = check.stages.iter().map(|s| s.name.len()).max().unwrap_or(5).max(5);
    let mut out = format!("{:<width$}  {:>10}  {:>10}  {:>8}\n", "stage", "start", "end", "trained");
    for stage in &check.stages {
        out.push_str(&format!(
            "{:<width$}  {:>10}  {:>10}  {:>8}\n",
            stage.name,
            show(stage.start_step),
            show(stage.end_step),
            show(stage.steps_trained)
        ));
    }
    if check.problems.is_empty() {
        out.push_str("\nevery stage continues the one before it\n");
    } else {
        out.push('\n');
        for problem in &check.problems {
            out.push_str(&format!("problem: {problem}\n"));
        }
    }
    out
}
