//! What the trainer does after a step, and which checkpoints it keeps: decisions as pure functions of the
//! stage config and counters, tested apart from any file I/O.

use crate::config::StageConfig;
use crate::run::checkpoint::{checkpoint_name, checkpoints_to_prune, CheckpointEntry};

/// What to do once a step of a stage is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepActions {
    /// Emit the step's metrics.
    pub log: bool,
    /// Evaluate the sampling weights (the checkpoint of this step is saved with it, or by the stage end).
    pub evaluate: bool,
    /// Save a checkpoint (not at the stage's end: the stage-end checkpoint is saved once the state points
    /// at the next stage).
    pub save: bool,
    /// Write a sample grid outside any checkpoint (only when no checkpoint is saved at this step).
    pub samples: bool,
    /// This was the stage's last step.
    pub stage_done: bool,
}

/// The actions after step `step_in_stage` (1-based: steps done in the stage so far) of `stage`.
pub fn after_step(stage: &StageConfig, step_in_stage: u64) -> StepActions {
    let done = step_in_stage >= stage.steps;
    let cadence = |every: u64| every > 0 && (step_in_stage % every == 0 || done);
    let log = stage.log_every == 0 || step_in_stage % stage.log_every == 0 || done;
    let evaluate = cadence(stage.eval_every);
    let save = !done && !evaluate && cadence(stage.save_every);
    let samples = !done && !evaluate && !save && cadence(stage.sample_every);
    StepActions { log, evaluate, save, samples, stage_done: done }
}

/// The stage a checkpoint of the current counters belongs to: the stage its weights were trained in. At a
/// stage boundary the counters already point at the next stage (`step_in_stage == 0`), but the weights are
/// the previous stage's.
pub fn checkpoint_stage(stage_names: &[String], stage_index: usize, step_in_stage: u64) -> String {
    let index = if step_in_stage == 0 && stage_index > 0 { stage_index - 1 } else { stage_index };
    stage_names.get(index.min(stage_names.len().saturating_sub(1))).cloned().unwrap_or_default()
}

/// The checkpoints to delete after saving `saved_step`: all but the newest `keep_last`, never the one just
/// saved nor the best.
pub fn prune<'a>(
    entries: &'a [CheckpointEntry],
    keep_last: usize,
    saved_step: u64,
    best_checkpoint: Option<&str>,
) -> Vec<&'a CheckpointEntry> {
    let mut protected = vec![checkpoint_name(saved_step)];
    if let Some(best) = best_checkpoint {
        protected.push(best.to_string());
    }
    checkpoints_to_prune(entries, keep_last, &protected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(steps: u64, log: u64, eval: u64, save: u64, sample: u64) -> StageConfig {
        StageConfig {
            steps,
            log_every: log,
            eval_every: eval,
            save_every: save,
            sample_every: sample,
            ..Default::default()
        }
    }

    #[test]
    fn cadences_fire_on_their_multiples_and_the_stage_end() {
        let s = stage(10, 3, 4, 5, 2);
        let acts: Vec<StepActions> = (1..=10).map(|i| after_step(&s, i)).collect();
        let which = |f: fn(&StepActions) -> bool| -> Vec<u64> {
            acts.iter().enumerate().filter(|(_, a)| f(a)).map(|(i, _)| i as u64 + 1).collect()
        };
        assert_eq!(which(|a| a.log), vec![3, 6, 9, 10]);
        assert_eq!(which(|a| a.evaluate), vec![4, 8, 10]);
        // Step 10 ends the stage: its checkpoint is the stage-end one, not a cadence save.
        assert_eq!(which(|a| a.save), vec![5]);
        // A grid is written only where no checkpoint (or evaluation) brings one.
        assert_eq!(which(|a| a.samples), vec![2, 6]);
        assert_eq!(which(|a| a.stage_done), vec![10]);
    }

    #[test]
    fn zero_cadences_never_fire_but_the_last_step_still_logs() {
        let s = stage(4, 10, 0, 0, 0);
        let acts: Vec<StepActions> = (1..=4).map(|i| after_step(&s, i)).collect();
        assert!(acts.iter().all(|a| !a.evaluate && !a.save && !a.samples));
        assert_eq!(acts.iter().map(|a| a.log).collect::<Vec<_>>(), vec![false, false, false, true]);
    }

    #[test]
    fn a_stage_end_checkpoint_belongs_to_the_stage_that_trained_it() {
        let names = vec!["base".to_string(), "adapter".to_string()];
        assert_eq!(checkpoint_stage(&names, 0, 0), "base");
        assert_eq!(checkpoint_stage(&names, 0, 7), "base");
        // Stage 0 finished: the counters point at stage 1, the weights are stage 0's.
        assert_eq!(checkpoint_stage(&names, 1, 0), "base");
        assert_eq!(checkpoint_stage(&names, 1, 3), "adapter");
        // The run's final checkpoint (past the last stage) is the last stage's.
        assert_eq!(checkpoint_stage(&names, 2, 0), "adapter");
    }

    #[test]
    fn pruning_keeps_the_newest_the_saved_and_the_best() {
        let entries: Vec<CheckpointEntry> = [10u64, 20, 30, 40]
            .iter()
            .map(|&step| CheckpointEntry {
                name: checkpoint_name(step),
                step,
                dir: std::path::PathBuf::from(checkpoint_name(step)),
                sealed: true,
            })
            .collect();
        let pruned: Vec<u64> = prune(&entries, 1, 40, Some("step-00000010")).iter().map(|e| e.step).collect();
        assert_eq!(pruned, vec![20, 30]);
        let pruned: Vec<u64> = prune(&entries, 2, 40, None).iter().map(|e| e.step).collect();
        assert_eq!(pruned, vec![10, 20]);
    }
}
