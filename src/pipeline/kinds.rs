//! The one place the kinds of sources and sinks are listed: each configured kind to the
//! member of the [`Source`] or [`Sink`] family that serves it.
//!
//! The pipeline asks here and names no concrete kind. Adding a kind means its file in
//! `source/` or `sink/` (its errors go in [`SinkError::Other`]), its keys in the
//! configuration (with its name in [`crate::config::SINK_KINDS`], which the configuration
//! checks at load, below this module so it cannot ask here), and one arm in [`sink`].

use crate::config::Config;
use crate::sink::jsonl::{JsonlOptions, JsonlSink, JsonlTarget};
use crate::sink::nats::NatsSink;
use crate::sink::redis::RedisSink;
use crate::sink::{Sink, SinkError};
use crate::source::firehose_source::FirehoseSource;
use crate::source::labeler::LabelerSource;
use crate::source::repo_listing::RepoListingSource;
use crate::source::{EventFamily, Source};

/// The configured sources: one relay firehose per `relays` entry, then one labeler per
/// `labelers` entry, then one repo listing per `repo_listing_hosts` entry, in order.
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
    let listings = (0..config.repo_listing_hosts.len()).map(|index| {
        Box::new(RepoListingSource::new(
            config.repo_listing_config(index),
            &config.data_dir,
        )) as Box<dyn Source>
    });
    relays.chain(labelers).chain(listings).collect()
}

/// A sink with its kind (`redis`, `jsonl`).
pub type KindedSink = (String, Box<dyn Sink>);

/// The configured sinks (`sinks`, else `sink`) for the events of source `host`, each
/// with its kind, in the configured order; see [`sink`].
///
/// # Errors
/// A sink that cannot be created, with its kind.
pub fn sinks(
    config: &Config,
    host: &str,
    family: EventFamily,
    events_per_sec_max: u64,
) -> Result<Vec<KindedSink>, (String, SinkError)> {
    config
        .sink_kinds()
        .into_iter()
        .map(|kind| {
            sink(config, kind, host, family, events_per_sec_max)
                .map(|sink| (kind.to_string(), sink))
                .map_err(|error| (kind.to_string(), error))
        })
        .collect()
}

/// The sink of `kind` for the events of source `host`, of `family`; the JSON-lines sink
/// writes at most `events_per_sec_max` events a second (0: no limit).
///
/// # Errors
/// The sink cannot be created (a malformed URL, a file that cannot be opened), or `kind`
/// is none of [`crate::config::SINK_KINDS`].
pub fn sink(
    config: &Config,
    kind: &str,
    host: &str,
    family: EventFamily,
    events_per_sec_max: u64,
) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match kind {
        "redis" => Box::new(RedisSink::new(config.redis_config(family), host)?),
        "nats" => Box::new(NatsSink::new(config.nats_config(family), host)),
        "jsonl" => Box::new(jsonl(config, family, events_per_sec_max)?),
        // The configuration refuses other kinds; a caller passing one gets it named.
        other => {
            return Err(SinkError::Other {
                kind: "unknown",
                source: format!(
                    "no sink kind {other:?} (known: {:?})",
                    crate::config::SINK_KINDS
                )
                .into(),
            })
        }
    })
}

/// The JSON-lines sink of the `jsonl_path` key.
fn jsonl(
    config: &Config,
    family: EventFamily,
    events_per_sec_max: u64,
) -> Result<JsonlSink, SinkError> {
    let target = if config.jsonl_path == "-" {
        JsonlTarget::Stdout
    } else {
        JsonlTarget::File(config.jsonl_path.clone().into())
    };
    let options = JsonlOptions {
        output: config.output_options(family),
        events_per_sec_max,
    };
    Ok(JsonlSink::open(&target, options)?)
}
