//! The prefetch thread: builds the next batches while the trainer computes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context};
use crossbeam_channel::{bounded, Receiver};

use super::batch::{make_batch_from_indices, Batch, EpochOrder};
use super::dataset::Dataset;
use crate::task::BatchSource;

/// The batches of a [`Dataset`] in the seeded epoch order: the shapes task's [`BatchSource`].
pub struct DatasetBatches {
    dataset: Dataset,
    order: EpochOrder,
}

impl DatasetBatches {
    /// The batches of `dataset` in the order drawn from `order_seed`.
    pub fn new(dataset: Dataset, order_seed: u64) -> Self {
        let order = EpochOrder::new(order_seed, dataset.len());
        Self { dataset, order }
    }
}

impl BatchSource for DatasetBatches {
    type Batch = Batch;

    fn batch(&mut self, cursor: u64, size: usize) -> anyhow::Result<Batch> {
        let indices = self.order.indices(cursor, size);
        Ok(make_batch_from_indices(&self.dataset, &indices, cursor))
    }
}

/// A background thread (named "prefetch") that produces consecutive batches of `batch_size` starting at
/// `start_cursor`, keeping up to `depth` ready in a bounded channel, so the trainer never waits for data.
///
/// The batches are exactly those the source gives at the same cursors (for [`Prefetcher::spawn`], those of
/// [`super::make_batch`]). Dropping the `Prefetcher` stops the thread promptly (at most the batch being
/// built finishes) and joins it.
pub struct Prefetcher<B = Batch> {
    receiver: Option<Receiver<(u64, Result<B, String>)>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Why the thread could not be started, if it could not.
    spawn_error: Option<String>,
    /// Cursor the next batch must carry.
    next_cursor: u64,
    batch_size: usize,
}

impl Prefetcher<Batch> {
    /// Starts the thread over `dataset` in the epoch order of `order_seed`. `depth` is clamped to at least
    /// 1. A failure to start the thread is reported by the first [`Self::next_batch`].
    pub fn spawn(dataset: Dataset, order_seed: u64, start_cursor: u64, batch_size: usize, depth: usize) -> Self {
        Self::spawn_source(DatasetBatches::new(dataset, order_seed), start_cursor, batch_size, depth)
    }
}

impl<B: Send + 'static> Prefetcher<B> {
    /// Starts the thread over any batch source. `depth` is clamped to at least 1. A failure to start the
    /// thread is reported by the first [`Self::next_batch`]; a source's error by the batch that hit it.
    pub fn spawn_source<S: BatchSource<Batch = B>>(
        mut source: S,
        start_cursor: u64,
        batch_size: usize,
        depth: usize,
    ) -> Self {
        let (sender, receiver) = bounded::<(u64, Result<B, String>)>(depth.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let run_log = crate::logging::current_run_log();
        let spawned = std::thread::Builder::new().name("prefetch".to_string()).spawn(move || {
            crate::logging::bind_thread_to(run_log.as_deref());
            let mut cursor = start_cursor;
            while !thread_stop.load(Ordering::Relaxed) {
                let batch = source.batch(cursor, batch_size).map_err(|e| format!("{e:#}"));
                let failed = batch.is_err();
                if sender.send((cursor, batch)).is_err() || failed {
                    break; // the Prefetcher was dropped, or the source cannot go on
                }
                cursor += batch_size as u64;
            }
        });
        let (handle, spawn_error) = match spawned {
            Ok(handle) => (Some(handle), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Self { receiver: Some(receiver), stop, handle, spawn_error, next_cursor: start_cursor, batch_size }
    }

    /// The next batch (cursors strictly consecutive: start, start+b, start+2b, ...). Blocks until it is
    /// ready; errors if the thread could not start or died (with its panic message).
    pub fn next_batch(&mut self) -> anyhow::Result<B> {
        if let Some(error) = &self.spawn_error {
            bail!("cannot start the data prefetch thread: {error}");
        }
        let receiver = self.receiver.as_ref().context("data prefetch channel already closed")?;
        match receiver.recv() {
            Ok((cursor, batch)) => {
                if cursor != self.next_cursor {
                    bail!("data prefetch out of order: expected cursor {}, got {cursor}", self.next_cursor);
                }
                let batch = batch.map_err(|e| anyhow!("the batch at data cursor {cursor}: {e}"))?;
                self.next_cursor += self.batch_size as u64;
                Ok(batch)
            }
            Err(_) => {
                let reason = match self.handle.take().map(JoinHandle::join) {
                    Some(Err(payload)) => panic_message(payload.as_ref()),
                    Some(Ok(())) | None => "it stopped".to_string(),
                };
                Err(anyhow!(
                    "data prefetch thread died before producing the batch at cursor {}: {reason}",
                    self.next_cursor
                ))
            }
        }
    }

    /// Cursor of the batch the next [`Self::next_batch`] returns (= the data cursor to store in a
    /// checkpoint taken now).
    pub fn next_cursor(&self) -> u64 {
        self.next_cursor
    }
}

impl<B> Drop for Prefetcher<B> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Closing the channel makes a blocked `send` fail, so the thread ends after at most one batch.
        drop(self.receiver.take());
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                tracing::warn!("data prefetch thread had panicked");
            }
        }
    }
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("panicked: {s}")
    } else {
        "panicked".to_string()
    }
}
