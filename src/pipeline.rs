//! Wiring: for each source, source -> its own queue -> each configured sink, reading it
//! with its own consumer ([`sink_task`]); and shutdown.
//!
//! The pipeline names no concrete source or sink: it takes the members of the
//! [`Source`](crate::source::Source) and [`Sink`](crate::sink::Sink) families that [`kinds`] makes of the configuration.
//!
//! On shutdown the sources stop reading and save their cursors, the sinks finish the
//! batch in hand (or leave it unacked), and the queues flush.

pub mod kinds;
pub mod sink_task;

use std::sync::Arc;

use tokio::sync::watch;
use tracing::Instrument;

use crate::config::Config;
use crate::queue::{QueueError, SpillQueue};
use crate::sink::SinkError;
use crate::source::{SourceError, SourceStats};

pub use crate::lane::{Lane, LaneSink};
pub use sink_task::{consumer_name, SINK_CONSUMER};

/// Why the pipeline could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// A queue failed to open.
    #[error("opening the queue of {host}: {source}")]
    Queue {
        /// The relay host.
        host: String,
        /// Why.
        source: QueueError,
    },
    /// A source stopped for good.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The sink of `kind` for `host` could not be created or failed for good.
    #[error("the {kind} sink of {host}: {source}")]
    Sink {
        /// The source whose events it writes.
        host: String,
        /// The sink's kind.
        kind: String,
        /// Why (boxed: the error stays small on the happy path).
        #[source]
        source: Box<SinkError>,
    },
    /// The sink of `kind` for `host` could not attach to, read from or ack to its queue.
    #[error("the {kind} sink of {host}: {doing}: {source}")]
    Consumer {
        /// The source whose queue it is.
        host: String,
        /// The sink's kind.
        kind: String,
        /// What the sink asked of the queue.
        doing: &'static str,
        /// The queue's error.
        #[source]
        source: Box<QueueError>,
    },
    /// A task panicked.
    #[error("a pipeline task panicked: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The data directory could not be created or locked.
    #[error("data_dir {}: {source}", path.display())]
    DataDir {
        /// The data directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process runs on the same data directory.
    #[error(transparent)]
    Locked(crate::data_dir_lock::LockError),
    /// `/metrics` and `/health` could not listen.
    #[error("metrics_listen {address}: {source}")]
    MetricsListen {
        /// The address configured.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A started pipeline.
pub struct Pipeline {
    /// Per relay.
    pub lanes: Vec<Lane>,
    /// Where `/metrics` and `/health` listen, if they do.
    pub metrics_addr: Option<std::net::SocketAddr>,
    tasks: tokio::task::JoinSet<Result<(), PipelineError>>,
    stop: watch::Sender<bool>,
    /// Held while the pipeline lives: one process per data directory.
    _lock: crate::data_dir_lock::DataDirLock,
}

impl Pipeline {
    /// Opens the queues and starts per relay a source task and a task per configured sink.
    ///
    /// # Errors
    /// A queue that cannot open, a sink that cannot be created, a consumer that cannot attach.
    pub fn start(config: &Config, sink_events_per_sec_max: u64) -> Result<Self, PipelineError> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut lanes = Vec::new();
        let lock = lock_data_dir(&config.data_dir)?;
        crate::heap_trim::start(config.heap_trim_interval_ms);
        for mut source in kinds::sources(config) {
            let host = source.label();
            let dir = config
                .data_dir
                .join(format!("queue-{}", source.file_name()));
            let queue =
                SpillQueue::open(&dir, config.queue_config(source.family())).map_err(|source| {
                    PipelineError::Queue {
                        host: host.clone(),
                        source,
                    }
                })?;
            let source_stats = Arc::new(SourceStats::default());
            // Settled before any task runs: no sink reads stored events ahead of the replay.
            let cursor = source.resume_point(&queue)?;
            let family = source.family();
            let sinks = sink_task::spawn_all(
                config,
                &host,
                &queue,
                source.as_ref(),
                sink_events_per_sec_max,
                &stopped,
                &mut tasks,
            )?;
            {
                let (queue, stats, stopped) =
                    (queue.clone(), Arc::clone(&source_stats), stopped.clone());
                let span = tracing::info_span!("source", relay = %host);
                tasks.spawn(
                    async move {
                        source
                            .run(queue, cursor, stats, stopped)
                            .await
                            .map_err(PipelineError::from)
                    }
                    .instrument(span),
                );
            }
            lanes.push(Lane {
                host,
                family,
                queue,
                source: source_stats,
                sinks,
            });
        }
        let metrics_addr = if config.metrics_listen.is_empty() {
            None
        } else {
            let bound = std::net::TcpListener::bind(&config.metrics_listen)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|source| PipelineError::MetricsListen {
                    address: config.metrics_listen.clone(),
                    source,
                })?;
            let addr = bound.local_addr().ok();
            tracing::info!(address = ?addr, "serving /metrics and /health");
            tokio::spawn(crate::metrics::serve(
                bound,
                Arc::new(lanes.clone()),
                config.health_rules(),
                stopped.clone(),
            ));
            addr
        };
        Ok(Pipeline {
            lanes,
            metrics_addr,
            tasks,
            stop,
            _lock: lock,
        })
    }

    /// A handle that stops the pipeline from elsewhere (a signal handler, a timer).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// Waits for the first task to end with an error, or for all of them after a stop.
    pub async fn join(mut self) -> Result<(), PipelineError> {
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            let result = joined.map_err(PipelineError::Task).and_then(|r| r);
            if let Err(error) = result {
                tracing::error!(%error, "pipeline task failed; stopping the others");
                let _ = self.stop.send(true);
                first_error.get_or_insert(error);
            }
        }
        for lane in &self.lanes {
            if let Err(error) = lane.queue.flush() {
                tracing::error!(%error, host = %lane.host, "flushing the queue on shutdown failed");
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Creates the data directory and takes its lock (one process per directory).
fn lock_data_dir(
    dir: &std::path::Path,
) -> Result<crate::data_dir_lock::DataDirLock, PipelineError> {
    std::fs::create_dir_all(dir).map_err(|source| PipelineError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    crate::data_dir_lock::DataDirLock::acquire(dir).map_err(|error| match error {
        crate::data_dir_lock::LockError::Io { path, source, .. } => {
            PipelineError::DataDir { path, source }
        }
        held => PipelineError::Locked(held),
    })
}
