//! `spillway bench e2e`: the loopback relay -> spillway -> redis-server, against
//! redis-benchmark's ceiling and a bare forwarder (`bench_floor`), each process's CPU per
//! event read from the OS in the same run; and the NATS JetStream rows.

use super::bench::{fixture_frames, mib, RSS_OVER_BUDGET_TARGET_BYTES};

/// Arguments of `spillway bench e2e`.
#[derive(Debug, clap::Args)]
pub struct E2eBenchArgs {
    /// Events sent by the loopback relay (the real frames, looped).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// The redis-server binary to start on a free loopback port.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// The redis-benchmark binary that measures the sink's ceiling.
    #[arg(long, default_value = "redis-benchmark")]
    pub redis_benchmark: String,
    /// The queue's memory budget in MiB.
    #[arg(long, default_value_t = 64)]
    pub budget_mib: u64,
    /// Run the loopback relay in this process instead of its own (a real relay is remote).
    #[arg(long)]
    pub relay_in_process: bool,
    /// Events per sink batch (`sink_batch_events_max`).
    #[arg(long, default_value_t = spillway::config::Config::default().sink_batch_events_max)]
    pub sink_batch_events_max: u64,
    /// Events per Redis MULTI/EXEC transaction (`redis_multi_events_max`).
    #[arg(long, default_value_t = spillway::config::Config::default().redis_multi_events_max)]
    pub redis_multi_events_max: u64,
    /// Redis transactions in flight (`redis_transactions_in_flight_max`; 1: one at a time).
    #[arg(long, default_value_t = spillway::config::Config::default().redis_transactions_in_flight_max)]
    pub redis_transactions_in_flight_max: u64,
    /// Entry IDs from the relay seq (`redis_idempotent_ids`).
    #[arg(long)]
    pub redis_idempotent_ids: bool,
    /// Run only the spilling row, not the second one under a budget nothing spills under.
    #[arg(long)]
    pub spilling_only: bool,
}

/// Arguments of the hidden relay child of `spillway bench e2e`.
#[derive(Debug, clap::Args)]
pub struct RelayPhaseArgs {
    /// Events the relay sends.
    #[arg(long)]
    pub events: u64,
    /// The first seq.
    #[arg(long)]
    pub base_seq: u64,
}

/// Serves the loopback relay, printing its URL, until stdin closes.
pub fn run_relay_phase(args: &RelayPhaseArgs) -> std::io::Result<()> {
    use spillway::source::relay::{LoopbackRelay, RelayConfig};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut config = RelayConfig::from_capture(super::FIXTURE_CAPTURE, args.base_seq)
            .map_err(std::io::Error::other)?;
        config.total_events = Some(args.events);
        let relay = LoopbackRelay::start(config).await?;
        println!("{}", relay.url());
        // The parent closes our stdin (or dies) when it is done.
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await
            .map_err(std::io::Error::other)??;
        Ok(())
    })
}

/// Arguments of the hidden forwarder child of `spillway bench e2e`.
#[derive(Debug, clap::Args)]
pub struct FloorPhaseArgs {
    /// The relay's `ws://` URL, cursor included.
    #[arg(long)]
    pub relay_url: String,
    /// The loopback port of redis-server.
    #[arg(long)]
    pub redis_port: u16,
    /// Frames to forward.
    #[arg(long)]
    pub events: u64,
    /// Frames read before they are written.
    #[arg(long)]
    pub sink_batch_events_max: u64,
    /// `XADD`s per MULTI/EXEC transaction.
    #[arg(long)]
    pub redis_multi_events_max: u64,
}

/// Forwards the relay's frames to Redis with nothing in between, once a line arrives on stdin.
pub fn run_floor_phase(args: &FloorPhaseArgs) -> std::io::Result<()> {
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = super::bench_floor::FloorConfig {
        events: args.events,
        batch_events_max: args.sink_batch_events_max as usize,
        multi_events_max: args.redis_multi_events_max as usize,
        reply_bytes_max: 64 << 20,
    };
    runtime.block_on(super::bench_floor::forward(
        &args.relay_url,
        args.redis_port,
        &config,
    ))
}

/// A child process of the bench, killed and reaped on drop, and the scratch directory it
/// uses (removed after it).
struct ChildGuard {
    child: std::process::Child,
    _dir: Option<tempfile_like::Dir>,
}

impl ChildGuard {
    fn new(child: std::process::Child, dir: Option<tempfile_like::Dir>) -> Self {
        Self { child, _dir: dir }
    }

    fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Killing a child already reaped only returns an error, ignored here.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to 10 s for `what` to accept connections on loopback `port`.
fn wait_for_port(port: u16, what: &str) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(std::io::Error::other(format!("{what} did not start")))
}

fn start_relay_child(events: u64, base_seq: u64) -> std::io::Result<(ChildGuard, String)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "relay-phase",
            "--events",
            &events.to_string(),
            "--base-seq",
            &base_seq.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("relay child without stdout"))?;
    let child = ChildGuard::new(child, None);
    let mut url = String::new();
    std::io::BufReader::new(stdout).read_line(&mut url)?;
    if url.trim().is_empty() {
        return Err(std::io::Error::other("the relay child printed no URL"));
    }
    Ok((child, url.trim().to_string()))
}

mod tempfile_like {
    /// A scratch directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A redis-server on loopback `port`, without persistence, its directory removed after it.
fn start_redis(binary: &str, port: u16) -> std::io::Result<ChildGuard> {
    // Removed on every way out, a failed start included.
    let dir = tempfile_like::Dir(
        std::env::temp_dir().join(format!("spillway-bench-redis-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0)?;
    let child = std::process::Command::new(binary)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir.0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            std::io::Error::other(format!(
                "starting {binary}: {e} (apt-get install redis-server)"
            ))
        })?;
    let redis = ChildGuard::new(child, Some(dir));
    wait_for_port(port, "redis-server")?;
    Ok(redis)
}

/// `redis-benchmark -P 64` of XADD with a payload of `payload_bytes`: the sink's ceiling in events/s.
fn redis_ceiling(
    benchmark: &str,
    port: u16,
    events: u64,
    payload_bytes: usize,
) -> std::io::Result<f64> {
    let payload = "x".repeat(payload_bytes);
    let output = std::process::Command::new(benchmark)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-P",
            "64",
            "-n",
            &events.to_string(),
            "--csv",
            "XADD",
            "ceiling",
            "*",
            "frame",
            &payload,
        ])
        .output()
        .map_err(|e| {
            std::io::Error::other(format!(
                "running {benchmark}: {e} (apt-get install redis-tools)"
            ))
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    // CSV: "test","rps",...; the second line's second field.
    text.lines()
        .nth(1)
        .and_then(|line| line.split(',').nth(1))
        .and_then(|field| field.trim_matches('"').parse::<f64>().ok())
        .ok_or_else(|| std::io::Error::other(format!("unexpected redis-benchmark output: {text}")))
}

/// CPU seconds each process spent during one end-to-end run (utime + stime from `/proc/<pid>/stat`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct E2eCpu {
    /// This process: the pipeline (source, queue, spill, sink) and its runtime; with
    /// `--relay-in-process`, the relay too.
    pub spillway_seconds: f64,
    /// The redis-server child.
    pub redis_seconds: f64,
    /// The relay child; `None` when it ran in this process (counted in `spillway_seconds`).
    pub relay_seconds: Option<f64>,
}

/// One end-to-end run: the loopback relay -> spillway -> redis-server, all events through.
#[derive(Debug, Clone, Copy)]
pub(crate) struct E2eRun {
    /// The queue's memory budget in this run.
    pub budget_bytes: u64,
    /// Events relay -> Redis per second of wall time.
    pub rate: f64,
    /// Peak RSS of this process during the run.
    pub peak_rss_bytes: u64,
    /// The largest anonymous (heap, stacks) and file-backed (mapped spill log, binary) parts of
    /// the RSS seen while polling every 50 ms; their sum can be below the peak.
    pub rss_anon_file_max_bytes: (u64, u64),
    /// Heap bytes live once the pipeline had started (the counting allocator; 0 without it).
    pub heap_start_bytes: u64,
    /// The most heap bytes live at once during the run.
    pub heap_peak_bytes: u64,
    /// Events the queue wrote to its spill log.
    pub spilled_events: u64,
    /// CPU seconds per process.
    pub cpu: E2eCpu,
}

/// The bare forwarder's run: relay -> this process -> redis-server, no queue or log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FloorRun {
    /// Events relay -> Redis per second of wall time.
    pub rate: f64,
    /// CPU seconds per process (the forwarder is this process).
    pub cpu: E2eCpu,
}

/// What `bench e2e` measured.
pub(crate) struct E2eFigures {
    /// redis-benchmark's XADD events/s.
    pub ceiling: f64,
    /// The run at the configured budget (the backlog spills).
    pub spilling: E2eRun,
    /// The run under a budget large enough that nothing spills (unless skipped).
    pub in_memory: Option<E2eRun>,
    /// The bare forwarder's run (`bench_floor`): what spillway cannot spend less than.
    pub floor: FloorRun,
    /// Mean frame size.
    pub mean_bytes: usize,
    /// Cores the processes shared.
    pub cores: usize,
}

fn us_per_event(cpu_seconds: f64, events: u64) -> f64 {
    cpu_seconds * 1e6 / events.max(1) as f64
}

fn print_e2e_run(label: &str, run: &E2eRun, floor: &FloorRun, events: u64, ceiling: f64) {
    let over = run.peak_rss_bytes as f64 - run.budget_bytes as f64;
    println!(
        "{label}: {:.0} events/s = {:.2}x the ceiling; {} events spilled; peak RSS {:.1} MiB = budget {:.0} MiB {:+.1} MiB (target <= +{} MiB)",
        run.rate,
        run.rate / ceiling,
        run.spilled_events,
        mib(run.peak_rss_bytes),
        mib(run.budget_bytes),
        over / (1024.0 * 1024.0),
        RSS_OVER_BUDGET_TARGET_BYTES >> 20,
    );
    println!(
        "  RSS parts (largest seen): anonymous {:.1} MiB, file-backed {:.1} MiB",
        mib(run.rss_anon_file_max_bytes.0),
        mib(run.rss_anon_file_max_bytes.1),
    );
    // sled allocates 41 zeroed histograms of 512 KiB at start: counted live, never resident.
    println!(
        "  heap (counting allocator): {:.1} MiB live once started (sled's zeroed, untouched metrics tables among it), peak {:.1} MiB = {:+.1} MiB during the run",
        mib(run.heap_start_bytes),
        mib(run.heap_peak_bytes),
        mib(run.heap_peak_bytes.saturating_sub(run.heap_start_bytes)),
    );
    print_cpu_table("spillway (source, queue, spill, sink)", &run.cpu, events);
    let floor_us = us_per_event(floor.cpu.spillway_seconds, events);
    let spillway_us = us_per_event(run.cpu.spillway_seconds, events);
    println!(
        "  spillway over the forwarder floor: {:+.2} µs/event, {:.2}x the floor's CPU (the floor alone is {:.2}x redis-server's)",
        spillway_us - floor_us,
        spillway_us / floor_us,
        floor.cpu.spillway_seconds / floor.cpu.redis_seconds,
    );
}

/// Each process's CPU seconds, per event, and against redis-server's in the same run.
fn print_cpu_table(this_process: &str, cpu: &E2eCpu, events: u64) {
    let redis = cpu.redis_seconds;
    let line = |name: &str, seconds: f64| {
        println!(
            "  {name:<40} {seconds:>9.2} {:>12.2} {:>10.2}x",
            us_per_event(seconds, events),
            seconds / redis
        );
    };
    println!(
        "  {:<40} {:>9} {:>12} {:>11}",
        "process", "CPU s", "µs/event", "/ redis"
    );
    line(this_process, cpu.spillway_seconds);
    line("redis-server (the baseline)", redis);
    match cpu.relay_seconds {
        Some(relay) => line("loopback relay (its own process)", relay),
        None => println!("  {:<40} {:>9}", "loopback relay", "in spillway's figure"),
    }
}

/// Relay -> spillway -> Redis on loopback against redis-benchmark's ceiling, measured in the same run.
pub fn run_e2e(args: &E2eBenchArgs) -> std::io::Result<()> {
    let figures = measure_e2e(args)?;
    println!(
        "end to end, loopback relay -> spillway -> redis-server, {} real frames (mean {} B), batches of {} in MULTI/EXEC transactions of {}, {} in flight{}; {} cores shared by every process",
        args.events,
        figures.mean_bytes,
        args.sink_batch_events_max,
        args.redis_multi_events_max,
        args.redis_transactions_in_flight_max,
        if args.redis_idempotent_ids { ", idempotent IDs" } else { "" },
        figures.cores
    );
    println!(
        "redis-benchmark -P 64 XADD (the ceiling): {:.0} events/s",
        figures.ceiling
    );
    println!(
        "forwarder floor (WebSocket in, the same MULTI/EXEC of XADDs out; no queue, no log, one thread): {:.0} events/s = {:.2}x the ceiling",
        figures.floor.rate,
        figures.floor.rate / figures.ceiling,
    );
    print_cpu_table(
        "the forwarder (this process)",
        &figures.floor.cpu,
        args.events,
    );
    print_e2e_run(
        "spilling (the configured budget)",
        &figures.spilling,
        &figures.floor,
        args.events,
        figures.ceiling,
    );
    if let Some(run) = &figures.in_memory {
        print_e2e_run(
            "in memory (a budget nothing spills under)",
            run,
            &figures.floor,
            args.events,
            figures.ceiling,
        );
    }
    nats_rows(args, figures.mean_bytes);
    Ok(())
}

/// A budget under which `events` frames of `mean_bytes` never spill: twice their cost, plus the default.
fn no_spill_budget_bytes(events: u64, mean_bytes: usize, budget_mib: u64) -> u64 {
    let per_event = mean_bytes as u64 + spillway::queue::budget::EVENT_OVERHEAD_BYTES;
    2 * events * per_event + (budget_mib << 20)
}

/// The NATS rows of `bench e2e`: a plain pipelined `async-nats` publisher of the same
/// messages (the ceiling), then relay -> spillway -> JetStream, against one nats-server
/// (`$NATS_SERVER_FOR_TESTS`, else `nats-server` on the PATH) started for the run. Skipped,
/// with the reason, when there is no such server.
fn nats_rows(args: &E2eBenchArgs, mean_bytes: usize) {
    match measure_nats(args) {
        Ok((ceiling, rate, peak_rss)) => {
            println!(
                "{:<44} {:>12.0} {:>7.2}x",
                "async-nats publisher, window 1024 (ceiling)", ceiling, 1.0
            );
            println!(
                "{:<44} {:>12.0} {:>7.2}x   peak RSS {:.1} MiB (same frames, mean {mean_bytes} B)",
                "spillway relay -> queue -> JetStream",
                rate,
                rate / ceiling,
                mib(peak_rss)
            );
        }
        Err(e) => println!("NATS rows skipped: {e}"),
    }
}

/// A JetStream nats-server on a free loopback port, and its URL.
fn start_nats(tag: &str) -> std::io::Result<(ChildGuard, String)> {
    let binary = std::env::var("NATS_SERVER_FOR_TESTS").unwrap_or_else(|_| "nats-server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // Removed on every way out, a failed start included.
    let dir = tempfile_like::Dir(
        std::env::temp_dir().join(format!("spillway-bench-nats-{tag}-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0)?;
    let conf = dir.0.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n",
            dir.0.join("store")
        ),
    )?;
    let child = std::process::Command::new(&binary)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| {
            std::io::Error::other(format!(
                "starting {binary}: {e} (apt-get install nats-server)"
            ))
        })?;
    let nats = ChildGuard::new(child, Some(dir));
    wait_for_port(port, "nats-server")?;
    Ok((nats, format!("nats://127.0.0.1:{port}")))
}

/// The ceiling (events/s of a plain publisher), spillway's events/s, and peak RSS.
fn measure_nats(args: &E2eBenchArgs) -> std::io::Result<(f64, f64, u64)> {
    use async_nats::jetstream;
    use spillway::config::Config;
    use spillway::pipeline::Pipeline;
    use std::sync::atomic::Ordering;

    let frames = fixture_frames()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (ceiling_server, url) = start_nats("ceiling")?;
    let ceiling = runtime.block_on(async {
        let client = async_nats::connect(&url)
            .await
            .map_err(std::io::Error::other)?;
        let js = jetstream::new(client);
        js.get_or_create_stream(jetstream::stream::Config {
            name: "ceiling".into(),
            subjects: vec!["ceiling.>".into()],
            duplicate_window: std::time::Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(std::io::Error::other)?;
        let started = std::time::Instant::now();
        let mut pending: std::collections::VecDeque<jetstream::context::PublishAckFuture> =
            std::collections::VecDeque::with_capacity(1_024);
        for i in 0..args.events {
            if pending.len() >= 1_024 {
                if let Some(ack) = pending.pop_front() {
                    ack.await.map_err(std::io::Error::other)?;
                }
            }
            let frame = frames[(i % frames.len() as u64) as usize];
            let publish = jetstream::message::PublishMessage::build()
                .payload(bytes::Bytes::from_static(frame))
                .message_id(format!("bench:{i}"))
                .header("seq", i.to_string().as_str())
                .header("type", "#commit");
            let ack = js
                .send_publish("ceiling.bench", publish)
                .await
                .map_err(std::io::Error::other)?;
            pending.push_back(ack);
        }
        while let Some(ack) = pending.pop_front() {
            ack.await.map_err(std::io::Error::other)?;
        }
        Ok::<_, std::io::Error>(args.events as f64 / started.elapsed().as_secs_f64())
    })?;
    drop(ceiling_server);
    let (_nats, url) = start_nats("e2e")?;
    let data = std::env::temp_dir().join(format!("spillway-bench-e2e-nats-{}", std::process::id()));
    let _data = tempfile_like::Dir(data.clone());
    let (rate, peak) = runtime.block_on(async {
        let base = 1_000_000_000;
        let (_relay_child, relay_url) = start_relay_child(args.events, base)?;
        let config = Config {
            data_dir: data.clone(),
            relays: vec![relay_url],
            start_cursor: Some(base - 1),
            memory_budget_bytes: args.budget_mib << 20,
            sink: "nats".into(),
            nats_urls: vec![url],
            metrics_listen: "127.0.0.1:0".into(),
            ..Config::default()
        };
        spillway::bench::rss::reset_peak();
        let started = std::time::Instant::now();
        let pipeline = Pipeline::start(&config, 0).map_err(std::io::Error::other)?;
        let (stop, sink) = (pipeline.stopper(), pipeline.lanes[0].sinks[0].stats.clone());
        let running = tokio::spawn(pipeline.join());
        while sink.events_total.load(Ordering::Relaxed) < args.events {
            if started.elapsed() > std::time::Duration::from_secs(600) {
                return Err(std::io::Error::other(
                    "the NATS end-to-end run did not finish in 10 minutes",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let rate = args.events as f64 / started.elapsed().as_secs_f64();
        let peak = spillway::bench::rss::peak_bytes();
        let _ = stop.send(true);
        let _ = running.await;
        Ok::<_, std::io::Error>((rate, peak))
    })?;
    Ok((ceiling, rate, peak))
}

/// Runs the end-to-end scenario and its ceiling.
pub(crate) fn measure_e2e(args: &E2eBenchArgs) -> std::io::Result<E2eFigures> {
    let frames = fixture_frames()?;
    let mean_bytes = frames.iter().map(|f| f.len()).sum::<usize>() / frames.len();
    let port = free_port()?;
    let redis = start_redis(&args.redis_server, port)?;
    let ceiling = redis_ceiling(&args.redis_benchmark, port, args.events, mean_bytes)?;
    drop(redis);
    let floor = measure_floor(args)?;
    let spilling = measure_pipeline(args, args.budget_mib << 20)?;
    let in_memory = if args.spilling_only {
        None
    } else {
        let budget = no_spill_budget_bytes(args.events, mean_bytes, args.budget_mib);
        Some(measure_pipeline(args, budget)?)
    };
    Ok(E2eFigures {
        ceiling,
        spilling,
        in_memory,
        floor,
        mean_bytes,
        cores: spillway::bench::cpu::cores(),
    })
}

/// This process's anonymous and file-backed resident bytes now (0 where `/proc` is not readable).
fn rss_parts_bytes() -> (u64, u64) {
    use spillway::bench::rss::proc_kib_field;
    let field = |name| proc_kib_field("/proc/self/status", name).map_or(0, |kib| kib * 1024);
    (field("RssAnon:"), field("RssFile:"))
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The CPU clocks of this process, redis-server and the relay child, started together.
struct ProcessClocks {
    this: spillway::bench::cpu::CpuSince,
    redis: spillway::bench::cpu::CpuSince,
    relay: Option<spillway::bench::cpu::CpuSince>,
}

fn unreadable_cpu(what: &str) -> std::io::Error {
    std::io::Error::other(format!("reading {what}'s CPU time from /proc"))
}

impl ProcessClocks {
    fn start(redis_pid: u32, relay_pid: Option<u32>) -> std::io::Result<Self> {
        use spillway::bench::cpu::CpuSince;
        Ok(Self {
            this: CpuSince::start(None).ok_or_else(|| unreadable_cpu("this process"))?,
            redis: CpuSince::start(Some(redis_pid))
                .ok_or_else(|| unreadable_cpu("redis-server"))?,
            relay: match relay_pid {
                Some(pid) => {
                    Some(CpuSince::start(Some(pid)).ok_or_else(|| unreadable_cpu("the relay"))?)
                }
                None => None,
            },
        })
    }

    /// CPU seconds each spent since [`ProcessClocks::start`].
    fn read(&self) -> std::io::Result<E2eCpu> {
        Ok(E2eCpu {
            spillway_seconds: self
                .this
                .elapsed_seconds()
                .ok_or_else(|| unreadable_cpu("this process"))?,
            redis_seconds: self
                .redis
                .elapsed_seconds()
                .ok_or_else(|| unreadable_cpu("redis-server"))?,
            relay_seconds: match &self.relay {
                Some(clock) => Some(
                    clock
                        .elapsed_seconds()
                        .ok_or_else(|| unreadable_cpu("the relay"))?,
                ),
                None => None,
            },
        })
    }
}

/// The bare forwarder (`bench floor-phase`, its own process, so nothing it leaves in the
/// heap counts in spillway's runs) through a fresh redis-server, the relay in its own process.
fn measure_floor(args: &E2eBenchArgs) -> std::io::Result<FloorRun> {
    let port = free_port()?;
    let redis = start_redis(&args.redis_server, port)?;
    let base = 1_000_000_000;
    let (relay, url) = start_relay_child(args.events, base)?;
    let forwarder = std::process::Command::new(std::env::current_exe()?)
        .args([
            "bench",
            "floor-phase",
            "--relay-url",
            &format!("{url}?cursor={}", base - 1),
            "--redis-port",
            &port.to_string(),
            "--events",
            &args.events.to_string(),
            "--sink-batch-events-max",
            &args.sink_batch_events_max.to_string(),
            "--redis-multi-events-max",
            &args.redis_multi_events_max.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    let mut forwarder = ChildGuard::new(forwarder, None);
    let clocks = ProcessClocks::start(redis.id(), Some(relay.id()))?;
    // The forwarder's CPU is what the kernel adds to this process's waited-for children
    // once it is reaped (exact, and no polling here to count).
    let children_before = children_cpu_seconds();
    let started = std::time::Instant::now();
    // The forwarder waits for a line on stdin, so it connects only once the clocks run.
    if let Some(mut stdin) = forwarder.child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(b"go\n");
    }
    let status = forwarder.child.wait()?;
    let rate = args.events as f64 / started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "the forwarder floor run failed ({status})"
        )));
    }
    let others = clocks.read()?;
    Ok(FloorRun {
        rate,
        cpu: E2eCpu {
            spillway_seconds: children_cpu_seconds() - children_before,
            ..others
        },
    })
}

/// User + system CPU seconds of every child this process has waited for (`RUSAGE_CHILDREN`).
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// One run through a fresh redis-server under `budget_bytes`, with each process's CPU time.
fn measure_pipeline(args: &E2eBenchArgs, budget_bytes: u64) -> std::io::Result<E2eRun> {
    use spillway::config::Config;
    use spillway::pipeline::Pipeline;
    use spillway::source::relay::{LoopbackRelay, RelayConfig};
    use std::sync::atomic::Ordering;

    let port = free_port()?;
    let redis = start_redis(&args.redis_server, port)?;
    let redis_pid = redis.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let data = std::env::temp_dir().join(format!(
        "spillway-bench-e2e-{}-{budget_bytes}",
        std::process::id()
    ));
    let _data = tempfile_like::Dir(data.clone());
    runtime.block_on(async {
        let base = 1_000_000_000;
        let (_relay, relay_child, url) = if args.relay_in_process {
            let mut relay_config = RelayConfig::from_capture(super::FIXTURE_CAPTURE, base)
                .map_err(std::io::Error::other)?;
            relay_config.total_events = Some(args.events);
            let relay = LoopbackRelay::start(relay_config).await?;
            let url = relay.url();
            (Some(relay), None, url)
        } else {
            let (child, url) = start_relay_child(args.events, base)?;
            (None, Some(child), url)
        };
        let config = Config {
            data_dir: data.clone(),
            relays: vec![url],
            start_cursor: Some(base - 1),
            memory_budget_bytes: budget_bytes,
            redis_url: format!("redis://127.0.0.1:{port}"),
            redis_high_water_events: 0,
            metrics_listen: "127.0.0.1:0".into(),
            sink_batch_events_max: args.sink_batch_events_max,
            redis_multi_events_max: args.redis_multi_events_max,
            redis_transactions_in_flight_max: args.redis_transactions_in_flight_max,
            redis_idempotent_ids: args.redis_idempotent_ids,
            ..Config::default()
        };
        let relay_pid = relay_child.as_ref().map(ChildGuard::id);
        spillway::bench::rss::reset_peak();
        let clocks = ProcessClocks::start(redis_pid, relay_pid)?;
        let started = std::time::Instant::now();
        let mut rss_parts_max = (0u64, 0u64);
        let mut polls = 0u64;
        let pipeline = Pipeline::start(&config, 0).map_err(std::io::Error::other)?;
        let heap_start_bytes = spillway::bench::heap::live_bytes();
        spillway::bench::heap::reset_peak();
        let lane = &pipeline.lanes[0];
        let (stop, sink, queue) = (
            pipeline.stopper(),
            lane.sinks[0].stats.clone(),
            lane.queue.clone(),
        );
        let running = tokio::spawn(pipeline.join());
        while sink.events_total.load(Ordering::Relaxed) < args.events {
            if started.elapsed() > std::time::Duration::from_secs(600) {
                return Err(std::io::Error::other(
                    "the end-to-end run did not finish in 10 minutes",
                ));
            }
            // Reading /proc/self/status is this process's CPU too (2% of the profile
            // every 5 ms), so the parts are sampled every 50 ms; the peak is the kernel's.
            polls += 1;
            if polls % 10 == 1 {
                let (anon, file) = rss_parts_bytes();
                rss_parts_max = (rss_parts_max.0.max(anon), rss_parts_max.1.max(file));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let cpu = clocks.read()?;
        let peak = spillway::bench::rss::peak_bytes();
        let spilled_events = queue.stats().spilled_events_total;
        let _ = stop.send(true);
        let _ = running.await;
        Ok::<_, std::io::Error>(E2eRun {
            budget_bytes,
            rate: args.events as f64 / seconds,
            peak_rss_bytes: peak,
            rss_anon_file_max_bytes: rss_parts_max,
            heap_start_bytes,
            heap_peak_bytes: spillway::bench::heap::peak_bytes(),
            spilled_events,
            cpu,
        })
    })
}
