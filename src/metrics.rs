//! `/metrics` (Prometheus text format) and `/health` (200, or 503 with JSON reasons) on a loopback port.
//!
//! The text is `prometheus-client`'s encoding of a [`Collector`] that reads the lanes'
//! stats at each scrape; the server is `hyper`'s HTTP/1.1, bounded as before: a request
//! head of at most [`REQUEST_BYTES_MAX`] read within [`REQUEST_TIMEOUT`], at most
//! [`CONNECTIONS_MAX`] connections at once (more are refused with 503), each closed
//! after one response.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeGaugeValue, GaugeValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::lane::Lane;
use crate::queue::{ConsumerStats, QueueStats};
use crate::sink::{now_ms, SinkStats};
use crate::source::EventFamily;

/// Largest request head read (hyper's smallest allowed read buffer, 8 KiB).
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Connections served at once.
pub const CONNECTIONS_MAX: usize = 16;
/// A client that sends no complete request within this is dropped.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`Rates`] samples the queues' counters.
pub const RATE_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: rates are averaged over this many intervals (10 s).
pub const RATE_WINDOW_SAMPLES: usize = 11;

/// Spill and read-back rates per lane, from counters sampled every [`RATE_SAMPLE_INTERVAL`].
#[derive(Debug, Default)]
pub struct Rates {
    /// Oldest first; at most [`RATE_WINDOW_SAMPLES`].
    samples: Mutex<VecDeque<RateSample>>,
}

/// When, and per lane (spilled, read back) events since open.
type RateSample = (Instant, Vec<(u64, u64)>);

impl Rates {
    /// Records the lanes' counters now.
    pub fn sample(&self, lanes: &[Lane]) {
        let counts = lanes
            .iter()
            .map(|l| {
                let s = l.queue.stats();
                (s.spilled_events_total, s.read_back_events_total)
            })
            .collect();
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == RATE_WINDOW_SAMPLES {
            samples.pop_front();
        }
        samples.push_back((Instant::now(), counts));
    }

    /// Per lane (spilled, read back) events per second over the window; 0 before two samples.
    pub fn per_second(&self, lane: usize) -> (f64, f64) {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let (Some((t0, first)), Some((t1, last))) = (samples.front(), samples.back()) else {
            return (0.0, 0.0);
        };
        let seconds = t1.duration_since(*t0).as_secs_f64();
        match (first.get(lane), last.get(lane)) {
            (Some(a), Some(b)) if seconds > 0.0 => (
                b.0.saturating_sub(a.0) as f64 / seconds,
                b.1.saturating_sub(a.1) as f64 / seconds,
            ),
            _ => (0.0, 0.0),
        }
    }
}

/// When `/health` turns 503.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthRules {
    /// The disk budget counts as nearly full at this fraction (0..1].
    pub disk_full_ratio: f64,
    /// A sink failing for longer than this is unhealthy, in seconds.
    pub sink_failure_secs: u64,
    /// Events lost for good keep the health unhealthy this long after the loss, in seconds.
    pub lost_events_secs: u64,
}

impl Default for HealthRules {
    fn default() -> Self {
        HealthRules {
            disk_full_ratio: 0.9,
            sink_failure_secs: 60,
            lost_events_secs: 3600,
        }
    }
}

impl HealthRules {
    /// Checks the rules' keys (`health_disk_full_ratio` in (0, 1]).
    ///
    /// # Errors
    /// The key and why, for the configuration to report.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.disk_full_ratio > 0.0 && self.disk_full_ratio <= 1.0) {
            return Err((
                "health_disk_full_ratio",
                format!("{} is not in (0, 1]", self.disk_full_ratio),
            ));
        }
        Ok(())
    }
}

/// Its lines of `spillway run --help`: the keys of `/metrics` and `/health`.
pub const CONFIG_HELP: &str = "  metrics_listen = \"127.0.0.1:9464\"     /metrics (Prometheus text) and /health (200, or 503 + JSON reasons); empty: off
  health_sink_failure_secs = 60         /health fails when a sink has failed this long
  health_disk_full_ratio = 0.9          /health fails when the disk budget is this full
  health_lost_events_secs = 3600        /health fails this long after events were lost for good
";

/// Checks the `metrics_listen` key: empty (off) or a socket address.
///
/// # Errors
/// The key and why, for the configuration to report.
pub fn check_listen(address: &str) -> Result<(), (&'static str, String)> {
    if !address.is_empty() && address.parse::<std::net::SocketAddr>().is_err() {
        return Err((
            "metrics_listen",
            format!("{address:?} is not an address like 127.0.0.1:9464 (empty turns it off)"),
        ));
    }
    Ok(())
}

/// A gauge's value: integral values print as integers (`12`, not `12.0`), as before
/// the client library encoded them, the rest (rates, ages, NaN) as floats.
#[derive(Debug, Clone, Copy)]
struct Value(f64);

impl EncodeGaugeValue for Value {
    fn encode(&self, encoder: &mut GaugeValueEncoder) -> std::fmt::Result {
        // Below 2^53 an integral f64 is exactly that integer.
        if self.0.fract() == 0.0 && self.0.abs() < 9_007_199_254_740_992.0 {
            (self.0 as i64).encode(encoder)
        } else {
            self.0.encode(encoder)
        }
    }
}

/// Where a family's samples come from: one per lane, or one per lane and reason, consumer or sink.
enum Source {
    /// A counter per lane.
    Counter(fn(&Lane, &QueueStats) -> u64),
    /// A gauge per lane.
    Gauge(fn(&Lane, &QueueStats) -> f64),
    /// A gauge per lane from its (spill, read-back) events per second.
    Rate(fn((f64, f64)) -> f64),
    /// A counter per lane and `reason`.
    Reasons(fn(&Lane, &QueueStats) -> [(&'static str, u64); 3]),
    /// A gauge per lane and `consumer`.
    Consumer(fn(&ConsumerStats) -> f64),
    /// A counter per lane and `sink` (its kind).
    SinkCounter(fn(&SinkStats) -> u64),
    /// A gauge per lane and `sink`.
    SinkGauge(fn(&SinkStats) -> f64),
    /// A counter per lane, `sink` and `reason`.
    SinkReasons(fn(&SinkStats) -> [(&'static str, u64); 3]),
}

fn load(value: &AtomicU64) -> u64 {
    value.load(Ordering::Relaxed)
}

/// Every family in exposition order: its sample name, its help, where its samples come from.
const FAMILIES: &[(&str, &str, Source)] = &[
    (
        "spillway_source_events_total",
        "Frames received from the relay (or labeler) and pushed (repos listed, for a listRepos source).",
        Source::Counter(|l, _| load(&l.source.frames_total)),
    ),
    (
        "spillway_source_bytes_total",
        "Bytes of those frames.",
        Source::Counter(|l, _| load(&l.source.bytes_total)),
    ),
    (
        "spillway_source_reconnects_total",
        "Reconnections to the relay (or labeler; listRepos pages retried, for a listRepos source).",
        Source::Counter(|l, _| load(&l.source.reconnects_total)),
    ),
    (
        "spillway_source_decode_errors_total",
        "Frames that failed to decode.",
        Source::Counter(|l, _| load(&l.source.decode_errors_total)),
    ),
    (
        "spillway_source_filtered_events_total",
        "Frames the collection/DID filter did not want (never queued).",
        Source::Counter(|l, _| load(&l.source.filtered_total)),
    ),
    (
        "spillway_sink_decode_errors_total",
        "Frames that did not decode into the sink's output format (logged, skipped).",
        Source::SinkCounter(|s| load(&s.decode_errors_total)),
    ),
    (
        "spillway_source_connected",
        "1 while connected to the relay (or labeler; while listRepos answers, for a listRepos source).",
        Source::Gauge(|l, _| load(&l.source.connected) as f64),
    ),
    (
        "spillway_relay_cursor",
        "The last relay (or label) seq pushed (the ordinal of the last repo listed, for a listRepos source).",
        Source::Gauge(|l, _| load(&l.source.last_seq) as f64),
    ),
    (
        "spillway_relay_cursor_age_seconds",
        "Seconds between now and the relay's `time` of the last event pushed (NaN before one).",
        Source::Gauge(|l, _| match load(&l.source.last_event_time_ms) {
            0 => f64::NAN,
            t => now_ms().saturating_sub(t) as f64 / 1000.0,
        }),
    ),
    (
        "spillway_durable_watermark",
        "The relay (or label) seq saved as the resume cursor (durable watermark).",
        Source::Gauge(|_, s| s.durable_watermark.map_or(f64::NAN, |w| w as f64)),
    ),
    (
        "spillway_sink_events_total",
        "Events written by the sink and acked.",
        Source::SinkCounter(|s| load(&s.events_total)),
    ),
    (
        "spillway_sink_failures_total",
        "Sink write attempts that failed.",
        Source::SinkCounter(|s| load(&s.failures_total)),
    ),
    (
        "spillway_sink_backpressure",
        "1 while the sink is paused above its high-water mark.",
        Source::SinkGauge(|s| load(&s.backpressure) as f64),
    ),
    (
        "spillway_memory_bytes",
        "Bytes the memory tier holds.",
        Source::Gauge(|_, s| s.memory_bytes as f64),
    ),
    (
        "spillway_memory_tier_bytes",
        "What the memory tier may hold.",
        Source::Gauge(|_, s| s.memory_tier_bytes as f64),
    ),
    (
        "spillway_memory_budget_bytes",
        "The configured memory budget.",
        Source::Gauge(|_, s| s.memory_budget_bytes as f64),
    ),
    (
        "spillway_disk_bytes",
        "Bytes the spill log takes on disk.",
        Source::Gauge(|_, s| s.disk_bytes as f64),
    ),
    (
        "spillway_disk_budget_bytes",
        "The configured disk budget.",
        Source::Gauge(|_, s| s.disk_budget_bytes as f64),
    ),
    (
        "spillway_disk_budget_effective_bytes",
        "The disk budget as the filesystem's free space caps it.",
        Source::Gauge(|_, s| s.disk_budget_bytes_effective as f64),
    ),
    (
        "spillway_disk_events",
        "Unconsumed events in the spill log.",
        Source::Gauge(|_, s| s.disk_events as f64),
    ),
    (
        "spillway_spilled_events_total",
        "Events written to the spill log.",
        Source::Counter(|_, s| s.spilled_events_total),
    ),
    (
        "spillway_read_back_events_total",
        "Events read back from the spill log.",
        Source::Counter(|_, s| s.read_back_events_total),
    ),
    (
        "spillway_spill_events_per_second",
        "Events written to the spill log per second, over the last 10 s.",
        Source::Rate(|r| r.0),
    ),
    (
        "spillway_read_back_events_per_second",
        "Events read back from the spill log per second, over the last 10 s.",
        Source::Rate(|r| r.1),
    ),
    (
        "spillway_dropped_events_total",
        "Events dropped, by reason.",
        Source::Reasons(|l, s| {
            [
                ("newest", s.dropped_newest_total),
                ("oldest", s.dropped_oldest_total),
                ("oversized", load(&l.source.oversized_total)),
            ]
        }),
    ),
    (
        "spillway_lost_events_total",
        "Events of damaged spill-log ranges that could not be fetched again, by reason.",
        Source::SinkReasons(|s| {
            [
                ("outside_relay_window", load(&s.lost_outside_window_total)),
                ("refetch_failed", load(&s.lost_refetch_failed_total)),
                ("position_unknown", load(&s.lost_position_unknown_total)),
            ]
        }),
    ),
    (
        "spillway_damaged_events_total",
        "Spill-log records met damaged or missing by the sink.",
        Source::SinkCounter(|s| load(&s.damaged_events_total)),
    ),
    (
        "spillway_refetched_events_total",
        "Events of damaged ranges fetched again from the relay and written.",
        Source::SinkCounter(|s| load(&s.refetched_events_total)),
    ),
    (
        "spillway_consumer_lag_events",
        "Events pushed but not yet delivered to the consumer.",
        Source::Consumer(|c| c.lag_events as f64),
    ),
    (
        "spillway_consumer_lag_seconds",
        "Age of the newest event delivered to the consumer while it lags; 0 when caught up.",
        Source::Consumer(|c| c.lag_ms as f64 / 1000.0),
    ),
    (
        "spillway_backlog_alert",
        "1 when a backlog alert threshold is crossed.",
        Source::Gauge(|_, s| f64::from(u8::from(s.backlog_alert))),
    ),
];

/// Every lane's figures, read from its stats at each scrape (the pull model: nothing
/// is updated on the hot path for the endpoint's sake).
struct LaneCollector {
    lanes: Arc<Vec<Lane>>,
    rates: Arc<Rates>,
}

impl std::fmt::Debug for LaneCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneCollector")
            .field("lanes", &self.lanes.len())
            .finish_non_exhaustive()
    }
}

impl Collector for LaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let stats: Vec<_> = self.lanes.iter().map(|l| (l, l.queue.stats())).collect();
        let rates: Vec<_> = (0..stats.len()).map(|i| self.rates.per_second(i)).collect();
        for (name, help, source) in FAMILIES {
            let counter = matches!(
                source,
                Source::Counter(_)
                    | Source::Reasons(_)
                    | Source::SinkCounter(_)
                    | Source::SinkReasons(_)
            );
            let (family, kind) = if counter {
                // The encoder appends `_total` to a counter's name itself.
                (
                    name.strip_suffix("_total").unwrap_or(name),
                    MetricType::Counter,
                )
            } else {
                (*name, MetricType::Gauge)
            };
            let mut metric = encoder.encode_descriptor(family, help, None, kind)?;
            for ((lane, s), rate) in stats.iter().zip(&rates) {
                let host = ("host", lane.host.as_str());
                let from = ("source", lane.family.name());
                match source {
                    Source::Counter(f) => metric
                        .encode_family(&[host, from])?
                        .encode_counter::<NoLabelSet, _, u64>(&f(lane, s), None)?,
                    Source::Gauge(f) => metric
                        .encode_family(&[host, from])?
                        .encode_gauge(&Value(f(lane, s)))?,
                    Source::Rate(f) => metric
                        .encode_family(&[host, from])?
                        .encode_gauge(&Value(f(*rate)))?,
                    Source::Reasons(f) => {
                        for (reason, value) in f(lane, s) {
                            metric
                                .encode_family(&[host, from, ("reason", reason)])?
                                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
                        }
                    }
                    Source::Consumer(f) => {
                        for c in &s.consumers {
                            metric
                                .encode_family(&[host, from, ("consumer", c.name.as_str())])?
                                .encode_gauge(&Value(f(c)))?;
                        }
                    }
                    Source::SinkCounter(f) => {
                        for sink in &lane.sinks {
                            metric
                                .encode_family(&[host, from, ("sink", sink.kind.as_str())])?
                                .encode_counter::<NoLabelSet, _, u64>(&f(&sink.stats), None)?;
                        }
                    }
                    Source::SinkGauge(f) => {
                        for sink in &lane.sinks {
                            metric
                                .encode_family(&[host, from, ("sink", sink.kind.as_str())])?
                                .encode_gauge(&Value(f(&sink.stats)))?;
                        }
                    }
                    Source::SinkReasons(f) => {
                        for sink in &lane.sinks {
                            for (reason, value) in f(&sink.stats) {
                                let labels =
                                    [host, from, ("sink", sink.kind.as_str()), ("reason", reason)];
                                metric
                                    .encode_family(&labels)?
                                    .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A registry holding every lane's metrics, read from their stats at each scrape.
pub fn registry(lanes: Arc<Vec<Lane>>, rates: Arc<Rates>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(LaneCollector { lanes, rates }));
    registry
}

/// Renders the registry in the Prometheus text exposition format (version 0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String fails only if an encoder does; ours do not.
    if let Err(e) = prometheus_text::encode(&mut out, registry) {
        tracing::warn!(%e, "encoding /metrics");
    }
    out
}

/// Why the pipeline is unhealthy; empty when healthy.
pub fn health_reasons(lanes: &[Lane], rules: HealthRules) -> Vec<String> {
    let mut reasons = Vec::new();
    for lane in lanes {
        let s = lane.queue.stats();
        if s.backlog_alert {
            reasons.push(format!("{}: backlog alert threshold crossed", lane.host));
        }
        // The filesystem's free space caps the budget: a disk filled by others counts too.
        let budget = s
            .disk_budget_bytes
            .min(s.disk_budget_bytes_effective.max(1));
        if s.disk_bytes as f64 >= budget as f64 * rules.disk_full_ratio {
            reasons.push(format!(
                "{}: disk budget nearly full ({} of {} bytes{})",
                lane.host,
                s.disk_bytes,
                budget,
                if budget < s.disk_budget_bytes {
                    ", capped by the filesystem's free space"
                } else {
                    ""
                }
            ));
        }
        if lane.source.connected.load(Ordering::Relaxed) == 0 {
            let what = match lane.family {
                EventFamily::Firehose => "the relay is disconnected",
                EventFamily::Labels => "the labeler is disconnected",
                EventFamily::RepoListing => "its listRepos pages fail",
            };
            reasons.push(format!("{}: {what}", lane.host));
        }
        for sink in &lane.sinks {
            sink_reasons(&lane.host, sink, rules, &mut reasons);
        }
    }
    reasons
}

/// Why the sink `sink` of `host` makes the pipeline unhealthy: failing too long, or
/// events lost for good lately. A sink stalled above its high-water mark is not a reason
/// by itself: its backlog spills, and the backlog and disk rules see that.
fn sink_reasons(
    host: &str,
    sink: &crate::lane::LaneSink,
    rules: HealthRules,
    reasons: &mut Vec<String>,
) {
    let (kind, stats) = (&sink.kind, &sink.stats);
    let failing_since = load(&stats.failing_since_ms);
    if failing_since > 0 && now_ms().saturating_sub(failing_since) > rules.sink_failure_secs * 1000
    {
        reasons.push(format!(
            "{host}: the {kind} sink has failed for more than {} s",
            rules.sink_failure_secs
        ));
    }
    let last_loss = load(&stats.last_loss_ms);
    if last_loss > 0 && now_ms().saturating_sub(last_loss) <= rules.lost_events_secs * 1000 {
        let lost = load(&stats.lost_outside_window_total)
            + load(&stats.lost_refetch_failed_total)
            + load(&stats.lost_position_unknown_total);
        reasons.push(format!(
            "{host}: {lost} events lost from a damaged spill log for the {kind} sink (see the log for their ranges)"
        ));
    }
}

fn health_json(reasons: &[String]) -> String {
    let items: Vec<String> = reasons
        .iter()
        .map(|r| crate::decode::json::json_string(r))
        .collect();
    format!(
        "{{\"healthy\":{},\"reasons\":[{}]}}\n",
        reasons.is_empty(),
        items.join(",")
    )
}

/// One response: `/metrics`, `/health`, or 404.
fn respond(
    path: &str,
    registry: &Registry,
    lanes: &[Lane],
    rules: HealthRules,
) -> Response<Full<Bytes>> {
    let (status, kind, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            prometheus_text::CONTENT_TYPE,
            render(registry),
        ),
        "/health" => {
            let reasons = health_reasons(lanes, rules);
            let status = if reasons.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (status, "application/json", health_json(&reasons))
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /health\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    response
}

/// Serves `/metrics` and `/health` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    lanes: Arc<Vec<Lane>>,
    rules: HealthRules,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let rates = Arc::new(Rates::default());
    let registry = Arc::new(registry(Arc::clone(&lanes), Arc::clone(&rates)));
    let mut tick = tokio::time::interval(RATE_SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = tick.tick() => {
                rates.sample(&lanes);
                continue;
            }
            _ = stop.changed() => return,
        };
        let Ok((mut stream, _)) = accepted else {
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Over the connection limit: refuse at once rather than queue.
            let _ = stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            continue;
        };
        let lanes = Arc::clone(&lanes);
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(request.uri().path(), &registry, &lanes, rules);
                async move { Ok::<_, Infallible>(response) }
            });
            // One request per connection, its head bounded in size and in time.
            let served = http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(REQUEST_BYTES_MAX)
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%e, "a /metrics or /health connection ended badly");
            }
        });
    }
}
