//! Real `nats-server`s with JetStream on free loopback ports: a single node (optionally
//! with TLS and credentials) and a 3-node cluster whose nodes can be killed and restarted.
//! `scripts/test` installs Debian's nats-server; without it these tests fail, loudly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("addr").port()
}

fn binary() -> String {
    std::env::var("NATS_SERVER_FOR_TESTS").unwrap_or_else(|_| "nats-server".into())
}

/// One server process, its config file and ports kept so it can be restarted as it was.
pub struct NatsNode {
    pub name: String,
    pub port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsNode {
    fn new(dir: &Path, name: &str, port: u16, body: &str) -> Self {
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(&conf, body).expect("write the nats-server config");
        NatsNode {
            name: name.to_string(),
            port,
            conf,
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Starts the process (again, after a kill: same config, same store).
    pub fn start(&mut self) {
        let log = super::append_log(&self.log);
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {:?} ({e}); run scripts/test, which installs Debian's nats-server",
                    binary()
                )
            });
        self.child = Some(child);
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log so far (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for NatsNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A single JetStream server.
pub struct NatsServer {
    pub node: NatsNode,
    pub dir: tempfile::TempDir,
}

impl NatsServer {
    /// A plain server (no TLS, no credentials), ready for JetStream requests.
    pub async fn start() -> Self {
        let server = Self::start_with("");
        wait_ready(&server.url(), async_nats::ConnectOptions::new()).await;
        server
    }

    /// A server with `extra` appended to its config (`tls { ... }`, `authorization { ... }`);
    /// not waited for: the caller knows how to connect.
    pub fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let store = dir.path().join("store");
        let body = format!(
            "server_name: single\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: {store:?} }}\n{extra}\n"
        );
        let mut node = NatsNode::new(dir.path(), "single", port, &body);
        node.start();
        NatsServer { node, dir }
    }

    pub fn url(&self) -> String {
        self.node.url()
    }
}

/// Three JetStream servers in one cluster.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream answers (a meta leader is elected).
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let nodes = (0..3)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let (port, cluster_port) = ports[i];
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, c))| format!("nats-route://127.0.0.1:{c}"))
                    .collect();
                let store = dir.path().join(&name);
                let body = format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: {store:?} }}\ncluster {{\n  name: spillway\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                );
                let mut node = NatsNode::new(dir.path(), &name, port, &body);
                node.start();
                node
            })
            .collect();
        let cluster = NatsCluster { nodes, _dir: dir };
        wait_ready(&cluster.urls()[0], async_nats::ConnectOptions::new()).await;
        cluster
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsNode::url).collect()
    }

    pub fn node(&mut self, name: &str) -> &mut NatsNode {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The server name of `stream`'s leader, asked through any live node.
    pub async fn stream_leader(&self, stream: &str) -> String {
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no leader of stream {stream} within 30 s"
            );
            if let Ok(client) = async_nats::connect(self.urls()).await {
                let js = jetstream::new(client);
                if let Ok(mut s) = js.get_stream(stream).await {
                    if let Ok(info) = s.info().await {
                        if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                            return leader;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `stream` has a leader and every replica is online and caught up.
    pub async fn wait_replicas_current(&self, stream: &str) {
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the replicas of {stream} did not catch up within 60 s\n{}",
                self.log_tails()
            );
            if let Ok(client) = async_nats::connect(self.urls()).await {
                let js = jetstream::new(client);
                if let Ok(mut s) = js.get_stream(stream).await {
                    if let Ok(info) = s.info().await {
                        if let Some(cluster) = &info.cluster {
                            let replicas = &cluster.replicas;
                            if cluster.leader.is_some()
                                && replicas.len() + 1 == self.nodes.len()
                                && replicas.iter().all(|r| r.current && !r.offline)
                            {
                                return;
                            }
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Waits until the server at `url` answers a JetStream account request.
pub async fn wait_ready(url: &str, options: async_nats::ConnectOptions) {
    let started = Instant::now();
    let client = loop {
        match options.clone().connect(url).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "nats-server at {url} not reachable within 15 s: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // The raw account request: the client's typed one does not parse nats-server 2.9's reply.
    loop {
        let answer = match client.request("$JS.API.INFO", "".into()).await {
            Ok(reply) => serde_json::from_slice::<serde_json::Value>(&reply.payload)
                .map_err(|e| e.to_string())
                .and_then(|v| match v.get("error") {
                    Some(error) => Err(error.to_string()),
                    None => Ok(()),
                }),
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok(()) => return,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(30),
                "JetStream at {url} not ready within 30 s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message of `stream`, counted by its `seq` header (a count above 1 is a duplicate).
pub async fn stream_seqs(
    urls: &[String],
    options: async_nats::ConnectOptions,
    stream: &str,
) -> BTreeMap<u64, u32> {
    let client = options.connect(urls.to_vec()).await.expect("connect");
    let js = jetstream::new(client);
    let mut handle = js.get_stream(stream).await.expect("the stream exists");
    let total = handle.info().await.expect("stream info").state.messages;
    // Right after a node's death the meta leader may be in election: ask again for a while.
    let started = Instant::now();
    let consumer = loop {
        match handle
            .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
            .await
        {
            Ok(consumer) => break consumer,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(30),
                "no ordered consumer on {stream} within 30 s: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut messages = consumer.messages().await.expect("messages");
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    let mut read = 0u64;
    while read < total {
        let message = tokio::time::timeout(Duration::from_secs(20), messages.next())
            .await
            .unwrap_or_else(|_| panic!("read {read} of {total} messages, then nothing for 20 s"))
            .expect("the consumer ended early")
            .expect("a message");
        let seq: u64 = message
            .headers
            .as_ref()
            .and_then(|h| h.get("seq"))
            .map(|v| v.as_str().parse().expect("a numeric seq header"))
            .expect("a seq header");
        *seen.entry(seq).or_default() += 1;
        read += 1;
    }
    seen
}

/// Missing seqs (the first 10) of `base..base+count` and the duplicates of `seen`.
pub fn missing_and_duplicates(seen: &BTreeMap<u64, u32>, base: u64, count: u64) -> (Vec<u64>, u64) {
    let missing = (base..base + count)
        .filter(|s| !seen.contains_key(s))
        .take(10)
        .collect();
    let duplicates = seen.values().map(|n| u64::from(n - 1)).sum();
    (missing, duplicates)
}
