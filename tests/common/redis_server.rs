//! A real `redis-server` on a free loopback port, stopped when dropped.
//! `scripts/test` installs Debian's redis-server; without it these tests fail, loudly.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    /// `requirepass`, if the server has one.
    password: Option<String>,
    _dir: tempfile::TempDir,
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
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut c) = redis::Client::open(server.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return server;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {port} did not answer PING within 10 s");
    }

    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The redis-server's process id, for tests that stop it (SIGSTOP) to make a hung server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
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
