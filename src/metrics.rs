//! `/metrics` (Prometheus text format) and `/health` (200, or 503 with JSON reasons) on a loopback port.
//!
//! The server is deliberately small: HTTP/1.1 `GET` only, requests bounded to
//! [`REQUEST_BYTES_MAX`], at most [`CONNECTIONS_MAX`] connections at once, each closed
//! after one response.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::lane::Lane;
use crate::sink::now_ms;

/// Largest request read.
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

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every lane's figures in the Prometheus text exposition format.
pub fn render(lanes: &[Lane], rates: &Rates) -> String {
    let mut out = String::new();
    let mut metric =
        |name: &str, kind: &str, help: &str, samples: &mut dyn Iterator<Item = (String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
    let host = |l: &Lane| format!("host=\"{}\"", label(&l.host));
    let stats: Vec<_> = lanes.iter().map(|l| (l, l.queue.stats())).collect();
    let per_lane = |f: &dyn Fn(&Lane, &crate::queue::QueueStats) -> f64| -> Vec<(String, f64)> {
        stats.iter().map(|(l, s)| (host(l), f(l, s))).collect()
    };
    let counter = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed) as f64;
    let lane_rates: Vec<(String, (f64, f64))> = lanes
        .iter()
        .enumerate()
        .map(|(i, l)| (host(l), rates.per_second(i)))
        .collect();

    metric(
        "spillway_source_events_total",
        "counter",
        "Frames received from the relay and pushed.",
        &mut per_lane(&|l, _| counter(&l.source.frames_total)).into_iter(),
    );
    metric(
        "spillway_source_bytes_total",
        "counter",
        "Bytes of those frames.",
        &mut per_lane(&|l, _| counter(&l.source.bytes_total)).into_iter(),
    );
    metric(
        "spillway_source_reconnects_total",
        "counter",
        "Reconnections to the relay.",
        &mut per_lane(&|l, _| counter(&l.source.reconnects_total)).into_iter(),
    );
    metric(
        "spillway_source_decode_errors_total",
        "counter",
        "Frames that failed to decode.",
        &mut per_lane(&|l, _| counter(&l.source.decode_errors_total)).into_iter(),
    );
    metric(
        "spillway_source_filtered_events_total",
        "counter",
        "Frames the collection/DID filter did not want (never queued).",
        &mut per_lane(&|l, _| counter(&l.source.filtered_total)).into_iter(),
    );
    metric(
        "spillway_sink_decode_errors_total",
        "counter",
        "Frames that did not decode into the sink's output format (logged, skipped).",
        &mut per_lane(&|l, _| counter(&l.sink.decode_errors_total)).into_iter(),
    );
    metric(
        "spillway_source_connected",
        "gauge",
        "1 while connected to the relay.",
        &mut per_lane(&|l, _| counter(&l.source.connected)).into_iter(),
    );
    metric(
        "spillway_relay_cursor",
        "gauge",
        "The last relay seq pushed.",
        &mut per_lane(&|l, _| counter(&l.source.last_seq)).into_iter(),
    );
    let now_ms = now_ms();
    metric(
        "spillway_relay_cursor_age_seconds",
        "gauge",
        "Seconds between now and the relay's `time` of the last event pushed (NaN before one).",
        &mut per_lane(
            &|l, _| match l.source.last_event_time_ms.load(Ordering::Relaxed) {
                0 => f64::NAN,
                t => now_ms.saturating_sub(t) as f64 / 1000.0,
            },
        )
        .into_iter(),
    );
    metric(
        "spillway_durable_watermark",
        "gauge",
        "The relay seq saved as the resume cursor (durable watermark).",
        &mut per_lane(&|_, s| s.durable_watermark.map_or(f64::NAN, |w| w as f64)).into_iter(),
    );
    metric(
        "spillway_sink_events_total",
        "counter",
        "Events written by the sink and acked.",
        &mut per_lane(&|l, _| counter(&l.sink.events_total)).into_iter(),
    );
    metric(
        "spillway_sink_failures_total",
        "counter",
        "Sink write attempts that failed.",
        &mut per_lane(&|l, _| counter(&l.sink.failures_total)).into_iter(),
    );
    metric(
        "spillway_sink_backpressure",
        "gauge",
        "1 while the sink is paused above its high-water mark.",
        &mut per_lane(&|l, _| counter(&l.sink.backpressure)).into_iter(),
    );
    metric(
        "spillway_memory_bytes",
        "gauge",
        "Bytes the memory tier holds.",
        &mut per_lane(&|_, s| s.memory_bytes as f64).into_iter(),
    );
    metric(
        "spillway_memory_tier_bytes",
        "gauge",
        "What the memory tier may hold.",
        &mut per_lane(&|_, s| s.memory_tier_bytes as f64).into_iter(),
    );
    metric(
        "spillway_memory_budget_bytes",
        "gauge",
        "The configured memory budget.",
        &mut per_lane(&|_, s| s.memory_budget_bytes as f64).into_iter(),
    );
    metric(
        "spillway_disk_bytes",
        "gauge",
        "Bytes the spill log takes on disk.",
        &mut per_lane(&|_, s| s.disk_bytes as f64).into_iter(),
    );
    metric(
        "spillway_disk_budget_bytes",
        "gauge",
        "The configured disk budget.",
        &mut per_lane(&|_, s| s.disk_budget_bytes as f64).into_iter(),
    );
    metric(
        "spillway_disk_budget_effective_bytes",
        "gauge",
        "The disk budget as the filesystem's free space caps it.",
        &mut per_lane(&|_, s| s.disk_budget_bytes_effective as f64).into_iter(),
    );
    metric(
        "spillway_disk_events",
        "gauge",
        "Unconsumed events in the spill log.",
        &mut per_lane(&|_, s| s.disk_events as f64).into_iter(),
    );
    metric(
        "spillway_spilled_events_total",
        "counter",
        "Events written to the spill log.",
        &mut per_lane(&|_, s| s.spilled_events_total as f64).into_iter(),
    );
    metric(
        "spillway_read_back_events_total",
        "counter",
        "Events read back from the spill log.",
        &mut per_lane(&|_, s| s.read_back_events_total as f64).into_iter(),
    );
    metric(
        "spillway_spill_events_per_second",
        "gauge",
        "Events written to the spill log per second, over the last 10 s.",
        &mut lane_rates.iter().map(|(h, r)| (h.clone(), r.0)),
    );
    metric(
        "spillway_read_back_events_per_second",
        "gauge",
        "Events read back from the spill log per second, over the last 10 s.",
        &mut lane_rates.iter().map(|(h, r)| (h.clone(), r.1)),
    );
    let drops: Vec<(String, f64)> = stats
        .iter()
        .flat_map(|(l, s)| {
            [
                ("newest", s.dropped_newest_total as f64),
                ("oldest", s.dropped_oldest_total as f64),
                ("oversized", counter(&l.source.oversized_total)),
            ]
            .into_iter()
            .map(move |(reason, v)| (format!("{},reason=\"{reason}\"", host(l)), v))
        })
        .collect();
    metric(
        "spillway_dropped_events_total",
        "counter",
        "Events dropped, by reason.",
        &mut drops.into_iter(),
    );
    let losses: Vec<(String, f64)> = lanes
        .iter()
        .flat_map(|l| {
            [
                ("outside_relay_window", &l.sink.lost_outside_window_total),
                ("refetch_failed", &l.sink.lost_refetch_failed_total),
                ("position_unknown", &l.sink.lost_position_unknown_total),
            ]
            .into_iter()
            .map(move |(reason, v)| (format!("{},reason=\"{reason}\"", host(l)), counter(v)))
        })
        .collect();
    metric(
        "spillway_lost_events_total",
        "counter",
        "Events of damaged spill-log ranges that could not be fetched again, by reason.",
        &mut losses.into_iter(),
    );
    metric(
        "spillway_damaged_events_total",
        "counter",
        "Spill-log records met damaged or missing by the sink.",
        &mut per_lane(&|l, _| counter(&l.sink.damaged_events_total)).into_iter(),
    );
    metric(
        "spillway_refetched_events_total",
        "counter",
        "Events of damaged ranges fetched again from the relay and written.",
        &mut per_lane(&|l, _| counter(&l.sink.refetched_events_total)).into_iter(),
    );
    let per_consumer = |f: &dyn Fn(&crate::queue::ConsumerStats) -> f64| -> Vec<(String, f64)> {
        stats
            .iter()
            .flat_map(|(l, s)| {
                s.consumers
                    .iter()
                    .map(move |c| (format!("{},consumer=\"{}\"", host(l), label(&c.name)), f(c)))
            })
            .collect()
    };
    metric(
        "spillway_consumer_lag_events",
        "gauge",
        "Events pushed but not yet delivered to the consumer.",
        &mut per_consumer(&|c| c.lag_events as f64).into_iter(),
    );
    metric(
        "spillway_consumer_lag_seconds",
        "gauge",
        "Age of the newest event delivered to the consumer while it lags; 0 when caught up.",
        &mut per_consumer(&|c| c.lag_ms as f64 / 1000.0).into_iter(),
    );
    metric(
        "spillway_backlog_alert",
        "gauge",
        "1 when a backlog alert threshold is crossed.",
        &mut per_lane(&|_, s| f64::from(u8::from(s.backlog_alert))).into_iter(),
    );
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
        let failing_since = lane.sink.failing_since_ms.load(Ordering::Relaxed);
        if failing_since > 0
            && now_ms().saturating_sub(failing_since) > rules.sink_failure_secs * 1000
        {
            reasons.push(format!(
                "{}: the sink has failed for more than {} s",
                lane.host, rules.sink_failure_secs
            ));
        }
        if lane.source.connected.load(Ordering::Relaxed) == 0 {
            reasons.push(format!("{}: the relay is disconnected", lane.host));
        }
        let last_loss = lane.sink.last_loss_ms.load(Ordering::Relaxed);
        if last_loss > 0 && now_ms().saturating_sub(last_loss) <= rules.lost_events_secs * 1000 {
            let lost = lane.sink.lost_outside_window_total.load(Ordering::Relaxed)
                + lane.sink.lost_refetch_failed_total.load(Ordering::Relaxed)
                + lane
                    .sink
                    .lost_position_unknown_total
                    .load(Ordering::Relaxed);
            reasons.push(format!(
                "{}: {lost} events lost from a damaged spill log (see the log for their ranges)",
                lane.host
            ));
        }
    }
    reasons
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

/// Serves `/metrics` and `/health` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    lanes: Arc<Vec<Lane>>,
    rules: HealthRules,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let rates = Arc::new(Rates::default());
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
        let rates = Arc::clone(&rates);
        tokio::spawn(async move {
            let _slot = slot;
            let mut request = vec![0u8; REQUEST_BYTES_MAX];
            let mut filled = 0;
            let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
                while filled < request.len() {
                    let n = stream.read(&mut request[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                    if request[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let line = String::from_utf8_lossy(&request[..filled]);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, kind, body) = match path {
                "/metrics" => (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    render(&lanes, &rates),
                ),
                "/health" => {
                    let reasons = health_reasons(&lanes, rules);
                    let status = if reasons.is_empty() {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    (status, "application/json", health_json(&reasons))
                }
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "try /metrics or /health\n".to_string(),
                ),
            };
            let response = format!("HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
