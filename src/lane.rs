//! One relay's running parts as the metrics and `/health` read them: its queue and the
//! counters its source and each of its sinks keep.
//!
//! It sits below both [`crate::pipeline`] (which builds lanes) and [`crate::metrics`]
//! (which reads them), so neither the metrics nor the configuration need the wiring.

use std::sync::Arc;

use crate::queue::SpillQueue;
use crate::sink::SinkStats;
use crate::source::{EventFamily, SourceStats};

/// One relay's running parts.
#[derive(Clone)]
pub struct Lane {
    /// The relay host.
    pub host: String,
    /// What its source reads (the `source` label of its metrics: a relay, a labeler and a
    /// repo listing may share a host).
    pub family: EventFamily,
    /// Its queue.
    pub queue: SpillQueue,
    /// Its source's counters.
    pub source: Arc<SourceStats>,
    /// Its sinks' counters, one per configured sink kind, in the configured order.
    pub sinks: Vec<LaneSink>,
}

/// One sink reading a lane's queue.
#[derive(Clone, Debug)]
pub struct LaneSink {
    /// Its kind as the `sink`/`sinks` keys name it (`redis`, `jsonl`): the `sink` label of its metrics.
    pub kind: String,
    /// The queue consumer it reads with.
    pub consumer: String,
    /// Its counters.
    pub stats: Arc<SinkStats>,
}

impl Lane {
    /// The counters of the sink of `kind`, if that kind reads this lane.
    pub fn sink_stats(&self, kind: &str) -> Option<&Arc<SinkStats>> {
        self.sinks.iter().find(|s| s.kind == kind).map(|s| &s.stats)
    }
}
