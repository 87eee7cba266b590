//! The one place the kinds of sources and sinks are listed: each configured kind to the
//! member of the [`Source`] or [`Sink`] family that serves it.
//!
//! The pipeline asks here and names no concrete kind. Adding a kind means its file in
//! `source/` or `sink/` (its errors go in [`SinkError::Other`]), its keys in the
//! configuration (with its name among the `sink` key's values, which the configuration
//! checks at load, below this module so it cannot ask here), and one arm below.

use crate::config::Config;
use crate::sink::jsonl::{JsonlOptions, JsonlSink, JsonlTarget};
use crate::sink::nats::NatsSink;
use crate::sink::redis::RedisSink;
use crate::sink::{Sink, SinkError};
use crate::source::firehose_source::FirehoseSource;
use crate::source::labeler::LabelerSource;
use crate::source::{EventFamily, Source};

/// The configured sources: one relay firehose per `relays` entry, then one labeler per
/// `labelers` entry, in order (the order of [`Config::queue_config`]'s index).
pub fn sources(config: &Config) -> Vec<Box<dyn Source>> {
    let relays = (0..config.relays.len()).map(|index| {
        Box::new(FirehoseSource::new(
            config.firehose_config(index),
            &config.data_dir,
        )) as Box<dyn Source>
    });
    let labelers = (0..config.labelers.len()).map(|index| {
        Box::new(LabelerSource::new(
            config.labeler_config(index),
            &config.data_dir,
        )) as Box<dyn Source>
    });
    relays.chain(labelers).collect()
}

/// The configured sink (`sink` key) for the events of source `host`, of `family`; the
/// JSON-lines sink writes at most `events_per_sec_max` events a second (0: no limit).
///
/// # Errors
/// The sink cannot be created (a malformed URL, a file that cannot be opened).
pub fn sink(
    config: &Config,
    host: &str,
    family: EventFamily,
    events_per_sec_max: u64,
) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match config.sink.as_str() {
        "redis" => Box::new(RedisSink::new(config.redis_config(family), host)?),
        "nats" => Box::new(NatsSink::new(config.nats_config(family), host)),
        // The configuration refuses other kinds, so this arm is `jsonl`.
        _ => {
            let target = if config.jsonl_path == "-" {
                JsonlTarget::Stdout
            } else {
                JsonlTarget::File(config.jsonl_path.clone().into())
            };
            let options = JsonlOptions {
                output: config.output_options(family),
                events_per_sec_max,
            };
            Box::new(JsonlSink::open(&target, options)?)
        }
    })
}
