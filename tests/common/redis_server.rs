//! A real `redis-server` on a free loopback port, stopped when dropped; plain, with a
//! password, or TLS only (certificates made by the `openssl` CLI, see [`TlsFiles`]).
//! `scripts/test` installs Debian's redis-server; without it these tests fail, loudly.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// `requirepass`, if the server has one.
    password: Option<String>,
    /// The certificates when the server speaks TLS only (`url()` is then `rediss://`).
    tls: Option<TlsFiles>,
    _dir: tempfile::TempDir,
}

/// PEM files made with the `openssl` CLI in a temporary directory: a CA, a server
/// certificate it signed for 127.0.0.1 and localhost (also usable as a client
/// certificate), and a second CA that signed nothing here.
pub struct TlsFiles {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub other_ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}); apt-get install openssl"));
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TlsFiles {
    pub fn make() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for name in ["ca", "other-ca"] {
            let subject = format!("/CN=spillway test {name}");
            let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subject];
            args.extend(ec);
            let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
            args.extend(["-keyout", &key, "-out", &pem]);
            args.extend([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            openssl(d, &args);
        }
        let mut args = vec![
            "req",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ];
        args.extend(ec);
        openssl(d, &args);
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("server.ext");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        );
        TlsFiles {
            ca: d.join("ca.pem"),
            cert: d.join("server.pem"),
            key: d.join("server.key"),
            other_ca: d.join("other-ca.pem"),
            _dir: dir,
        }
    }

    /// A client trusting this CA, with the client certificate when `client_cert`.
    pub fn client(&self, url: &str, client_cert: bool) -> redis::RedisResult<redis::Client> {
        let read = |p: &std::path::Path| std::fs::read(p).expect("a PEM file");
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: client_cert.then(|| redis::ClientTlsConfig {
                    client_cert: read(&self.cert),
                    client_key: read(&self.key),
                }),
                root_cert: Some(read(&self.ca)),
            },
        )
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("addr").port()
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, None)
    }

    /// A server with `requirepass password`; `url()` carries the password.
    pub fn start_with_password(password: &str) -> Self {
        Self::start_with(free_port(), Some(password))
    }

    /// A server on TLS only (`--port 0`), with its certificate signed by `tls.ca`; with
    /// `client_certs` it asks clients for a certificate of that CA too.
    pub fn start_tls(tls: TlsFiles, client_certs: bool) -> Self {
        let port = free_port();
        let binary =
            std::env::var("REDIS_SERVER_FOR_TESTS").unwrap_or_else(|_| "redis-server".into());
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(&binary)
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(&tls.cert)
            .arg("--tls-key-file")
            .arg(&tls.key)
            .arg("--tls-ca-cert-file")
            .arg(&tls.ca)
            .args(["--tls-auth-clients", if client_certs { "yes" } else { "no" }])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary:?} ({e}); run scripts/test, which installs Debian's redis-server"));
        let server = RedisServer {
            child,
            port,
            password: None,
            tls: Some(tls),
            _dir: dir,
        };
        server.wait_for_ping();
        server
    }

    fn wait_for_ping(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut c) = self.client().and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    /// A client of this server: plain, or TLS with the CA and the client certificate.
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls {
            Some(tls) => tls.client(&self.url(), true),
            None => redis::Client::open(self.url()),
        }
    }

    /// The certificates of a TLS server.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    fn start_with(port: u16, password: Option<&str>) -> Self {
        let binary =
            std::env::var("REDIS_SERVER_FOR_TESTS").unwrap_or_else(|_| "redis-server".into());
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new(&binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(dir.path())
            .args(password.map(|p| ["--requirepass", p]).into_iter().flatten())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary:?} ({e}); run scripts/test, which installs Debian's redis-server"));
        let server = RedisServer {
            child,
            port,
            password: password.map(str::to_string),
            tls: None,
            _dir: dir,
        };
        server.wait_for_ping();
        server
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.password {
            Some(password) => format!("{scheme}://:{password}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// The redis-server's process id, for tests that stop it (SIGSTOP) to make a hung server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connection(&self) -> redis::Connection {
        self.client()
            .and_then(|c| c.get_connection())
            .expect("redis connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads and deletes up to `count` entries from the stream's head; returns their seqs.
pub fn take_seqs(c: &mut redis::Connection, stream: &str, count: usize) -> Vec<u64> {
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query(c)
        .expect("XRANGE");
    let mut seqs = Vec::with_capacity(entries.ids.len());
    let mut ids = Vec::with_capacity(entries.ids.len());
    for entry in &entries.ids {
        let seq: u64 = entry.get("seq").expect("seq field");
        let frame: Vec<u8> = entry.get("frame").expect("frame field");
        let decoded =
            spillway::source::frame::decode(&frame, usize::MAX).expect("a stored frame decodes");
        assert_eq!(decoded.seq(), Some(seq), "the seq field matches the frame");
        seqs.push(seq);
        ids.push(entry.id.clone());
    }
    if !ids.is_empty() {
        let _: u64 = redis::cmd("XDEL")
            .arg(stream)
            .arg(&ids)
            .query(c)
            .expect("XDEL");
    }
    seqs
}

/// Takes seqs from the stream's head until `count` arrived; panics naming how many did after `timeout`.
pub fn drain_seqs(url: &str, stream: &str, count: u64, timeout: Duration) -> Vec<u64> {
    let mut c = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("connection");
    let started = Instant::now();
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < count {
        assert!(
            started.elapsed() < timeout,
            "only {} of {count} arrived within {timeout:?}",
            seqs.len()
        );
        let got = take_seqs(&mut c, stream, 2_000);
        if got.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
        seqs.extend(got);
    }
    seqs
}

/// A Redis Cluster of `nodes` masters (no replicas) on free loopback ports, made with
/// `redis-cli --cluster create`; stopped when dropped.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// A free port whose cluster bus port (`port + 10000`) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    pub fn start(nodes: usize) -> Self {
        let binary =
            std::env::var("REDIS_SERVER_FOR_TESTS").unwrap_or_else(|_| "redis-server".into());
        let servers: Vec<RedisServer> = (0..nodes)
            .map(|_| {
                let port = free_cluster_port();
                let dir = tempfile::tempdir().expect("tempdir");
                let child = Command::new(&binary)
                    .args([
                        "--port",
                        &port.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                    ])
                    .arg("--dir")
                    .arg(dir.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot start {binary:?} ({e})"));
                let server = RedisServer {
                    child,
                    port,
                    password: None,
                    tls: None,
                    _dir: dir,
                };
                server.wait_for_ping();
                server
            })
            .collect();
        let addresses: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); apt-get install redis-tools"));
        assert!(
            output.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for server in &servers {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut server.connection())
                    .expect("CLUSTER INFO");
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster never became ok: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes: servers }
    }

    /// The seeds as one `redis_url`: comma-separated URLs.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
