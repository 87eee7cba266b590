//! A labeler's `com.atproto.label.subscribeLabels` stream as a member of the
//! [`Source`](crate::source::Source) family: the rsky ingester's labeler loop, with a
//! queue, a durable cursor and nothing lost.
//!
//! The stream has the firehose's framing (a `{op, t}` header and a body), its `cursor`
//! parameter, its `#info` and error frames, so the client is the relay client of
//! [`super::firehose`] reading [`Subscription::Labels`]: the same reconnect backoff, ping,
//! idle timeout, frame size limit, bad-frame rule (drop the connection, resume after the
//! last seq pushed) and cursor file. Each `#labels` frame is one event, its position the
//! label `seq`, its payload the raw frame; the sink renders it (see
//! [`crate::decode::labels`]).
//!
//! With no saved cursor it starts at `cursor=0`, the labeler's whole history, as the rsky
//! ingester does. `start_cursor` is a relay seq and does not apply here. A damaged spill
//! log's range is fetched again with the relay's refetch, which the labeler's cursor
//! serves just as well.

use std::sync::Arc;

use tokio::sync::watch;

use super::cursor::RelayId;
use super::firehose::{FirehoseConfig, Subscription};
use super::firehose_source::FirehoseSource;
use super::{EventFamily, Refetch, SourceError, SourceStats};
use crate::queue::SpillQueue;

/// Its lines of `spillway run --help`: the keys of the labeler source.
pub const CONFIG_HELP: &str = "  labelers = []                         wss://HOST/xrpc/com.atproto.label.subscribeLabels, one source + queue each (queue-labels-<host>)
  redis_label_stream = \"label_live\"     labels' stream (field `labels`, rsky's JSON unless raw); cursor key <stream>:cursor:<host>
";

/// The settings of the labeler at `url`: the relay client's defaults, reading labels, from
/// the labeler's first label when no cursor is saved.
pub fn labeler_config(url: impl Into<String>) -> FirehoseConfig {
    let mut config = FirehoseConfig::new(url);
    config.subscription = Subscription::Labels;
    config.initial_cursor = Some(0);
    config
}

/// Checks the `labelers` key: each a `ws://` or `wss://` URL, no two sharing a queue
/// directory (a labeler's is `queue-labels-<host>`, apart from any relay's).
///
/// # Errors
/// The key and why, for the configuration to report.
pub fn check_labelers(urls: &[String]) -> Result<(), (&'static str, String)> {
    let mut names = std::collections::BTreeMap::new();
    for url in urls {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(("labelers", format!("{url:?} is not a ws:// or wss:// URL")));
        }
        let name = RelayId::of_subscription_url(url, Subscription::Labels).file_name();
        if let Some(other) = names.insert(name.clone(), url) {
            return Err((
                "labelers",
                format!("{other:?} and {url:?} would share the queue directory queue-{name}"),
            ));
        }
    }
    Ok(())
}

/// A labeler as a [`crate::source::Source`]: the relay client on its label stream.
#[derive(Debug, Clone)]
pub struct LabelerSource {
    inner: FirehoseSource,
}

impl LabelerSource {
    /// The source of `config` (see [`labeler_config`]), keeping its cursor file in `data_dir`.
    pub fn new(config: FirehoseConfig, data_dir: &std::path::Path) -> Self {
        debug_assert_eq!(config.subscription, Subscription::Labels);
        LabelerSource {
            inner: FirehoseSource::new(config, data_dir),
        }
    }
}

impl crate::source::Source for LabelerSource {
    /// `host[:port]`, as the rsky ingester names a labeler in its cursor key.
    fn label(&self) -> String {
        self.inner.label()
    }

    fn family(&self) -> EventFamily {
        EventFamily::Labels
    }

    fn file_name(&self) -> String {
        self.inner.file_name()
    }

    fn resume_point(&mut self, queue: &SpillQueue) -> Result<Option<u64>, SourceError> {
        self.inner.resume_point(queue)
    }

    fn run(
        self: Box<Self>,
        queue: SpillQueue,
        resume: Option<u64>,
        stats: Arc<SourceStats>,
        stop: watch::Receiver<bool>,
    ) -> futures_util::future::BoxFuture<'static, Result<(), SourceError>> {
        Box::new(self.inner).run(queue, resume, stats, stop)
    }

    /// The relay's range refetch: a labeler takes a `cursor` too.
    fn refetcher(&self) -> Option<Box<dyn Refetch>> {
        self.inner.refetcher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Source;

    #[test]
    fn a_labeler_is_named_by_its_host_and_queued_apart_from_a_relay_there() {
        let dir = std::path::Path::new("/nonexistent");
        let url = "wss://mod.bsky.app/xrpc/com.atproto.label.subscribeLabels";
        let source = LabelerSource::new(labeler_config(url), dir);
        assert_eq!(source.label(), "mod.bsky.app");
        assert_eq!(source.file_name(), "labels-mod.bsky.app");
        assert_eq!(source.family(), EventFamily::Labels);
        assert!(source.refetcher().is_some());
        let relay = FirehoseSource::new(
            FirehoseConfig::new("wss://mod.bsky.app/xrpc/com.atproto.sync.subscribeRepos"),
            dir,
        );
        assert_ne!(relay.file_name(), source.file_name());
    }

    #[test]
    fn the_labelers_key_refuses_what_it_cannot_use_and_names_itself() {
        assert!(check_labelers(&[]).is_ok());
        let (key, reason) =
            check_labelers(&["https://mod.example".into()]).expect_err("not a ws URL");
        assert_eq!(key, "labelers");
        assert!(reason.contains("https://mod.example"), "{reason}");
        let twice = "wss://mod.example/xrpc/com.atproto.label.subscribeLabels".to_string();
        let (key, reason) = check_labelers(&[twice.clone(), twice]).expect_err("two share a queue");
        assert_eq!(key, "labelers");
        assert!(reason.contains("queue-labels-mod.example"), "{reason}");
    }
}
