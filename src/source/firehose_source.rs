//! The relay firehose as a member of the [`Source`](crate::source::Source) family: the
//! live reader of [`super::firehose`], its cursor file, and the range refetch of
//! [`super::refetch`] for repairing what the spill log lost.

use std::sync::Arc;

use tokio::sync::watch;

use super::cursor::CursorFile;
use super::firehose::{resume_point, run, FirehoseConfig};
use super::{SourceError, SourceStats};
use crate::queue::SpillQueue;

/// The relay firehose as a [`crate::source::Source`]: its settings and its cursor file.
#[derive(Debug, Clone)]
pub struct FirehoseSource {
    config: FirehoseConfig,
    cursor_file: CursorFile,
}

impl FirehoseSource {
    /// The source of `config`, keeping its cursor file in `data_dir`.
    pub fn new(config: FirehoseConfig, data_dir: &std::path::Path) -> Self {
        let cursor_file = CursorFile::for_relay(data_dir, &config.relay_id());
        FirehoseSource {
            config,
            cursor_file,
        }
    }
}

impl crate::source::Source for FirehoseSource {
    fn label(&self) -> String {
        self.config.host()
    }

    fn file_name(&self) -> String {
        self.config.relay_id().file_name()
    }

    fn resume_point(&mut self, queue: &SpillQueue) -> Result<Option<u64>, SourceError> {
        resume_point(&self.config, queue, &self.cursor_file)
    }

    fn run(
        self: Box<Self>,
        queue: SpillQueue,
        resume: Option<u64>,
        stats: Arc<SourceStats>,
        stop: watch::Receiver<bool>,
    ) -> futures_util::future::BoxFuture<'static, Result<(), SourceError>> {
        let FirehoseSource {
            config,
            cursor_file,
        } = *self;
        Box::pin(run(config, queue, cursor_file, resume, stats, stop))
    }

    fn refetcher(&self) -> Option<Box<dyn crate::source::Refetch>> {
        Some(Box::new(crate::source::refetch::FirehoseRefetch {
            config: self.config.clone(),
            limits: crate::source::refetch::RefetchLimits::default(),
        }))
    }
}
