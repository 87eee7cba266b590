//! One relay's running parts as the metrics and `/health` read them: its queue and the
//! counters its source and sink keep.
//!
//! It sits below both [`crate::pipeline`] (which builds lanes) and [`crate::metrics`]
//! (which reads them), so neither the metrics nor the configuration need the wiring.

use std::sync::Arc;

use crate::queue::SpillQueue;
use crate::sink::SinkStats;
use crate::source::SourceStats;

/// One relay's running parts.
#[derive(Clone)]
pub struct Lane {
    /// The relay host.
    pub host: String,
    /// Its queue.
    pub queue: SpillQueue,
    /// Its source's counters.
    pub source: Arc<SourceStats>,
    /// Its sink's counters.
    pub sink: Arc<SinkStats>,
}
