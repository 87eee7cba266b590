//! A loopback `com.atproto.sync.listRepos` server paging through a generated listing, with
//! scripted faults (429, 500, an oversized or malformed page) by request number.
//!
//! Repo `i` (0-based) is [`repo_did`]`(i)`; the cursor is the decimal index of the next
//! repo. [`expected_entry`] writes, by hand, the entry rsky's ingester writes for it.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// A scripted answer in place of a page.
#[derive(Debug, Clone)]
pub enum Fault {
    /// This status, with `Retry-After` in seconds if given.
    Status(u16, Option<u64>),
    /// A 200 whose body is this many bytes of a valid-looking page.
    Oversized(usize),
    /// A 200 whose body is not a listRepos answer.
    Malformed,
}

/// What the server saw and sent.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Requests answered (faults included).
    pub requests: AtomicU64,
    /// Pages answered with repos.
    pub pages_served: AtomicU64,
    /// Repos sent in those pages.
    pub repos_served: AtomicU64,
    /// Whether the last page (the one without a cursor) was sent.
    pub last_page_served: AtomicBool,
    /// The cursor of every request, in order (`None`: the first page).
    pub cursors: Mutex<Vec<Option<u64>>>,
}

/// The server: it stops when dropped.
pub struct ListReposServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: Arc<ServerStats>,
    faults: Arc<Mutex<BTreeMap<u64, Fault>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ListReposServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The DID of repo `i`.
pub fn repo_did(i: u64) -> String {
    format!("did:plc:{i:024x}")
}

fn rev(i: u64) -> String {
    format!("3l{i:011}")
}

/// Repo `i`'s (`active` in the answer, `status` in the answer): a mix of the forms a relay sends.
fn account(i: u64) -> (Option<bool>, Option<&'static str>) {
    match i % 17 {
        3 => (Some(false), Some("deactivated")),
        5 => (None, None),
        11 => (Some(false), Some("takendown")),
        _ => (Some(true), None),
    }
}

/// The entry rsky's ingester writes for repo `i` listed from `host_field`, written by hand.
pub fn expected_entry(i: u64, host_field: &str) -> String {
    let (active, status) = account(i);
    let status = status.map_or("null".to_string(), |s| format!("\"{s}\""));
    format!(
        r#"{{"did":"{}","host":"{host_field}","rev":"{}","status":{status},"active":{}}}"#,
        repo_did(i),
        rev(i),
        active.unwrap_or(true)
    )
}

fn page_body(start: u64, end: u64, total: u64) -> String {
    let mut body = String::with_capacity(((end - start) * 140) as usize + 64);
    body.push('{');
    if end < total {
        body.push_str(&format!("\"cursor\":\"{end}\","));
    }
    body.push_str("\"repos\":[");
    for i in start..end {
        if i > start {
            body.push(',');
        }
        let (active, status) = account(i);
        body.push_str(&format!(
            "{{\"did\":\"{}\",\"head\":\"bafyreih{i:020}\",\"rev\":\"{}\"",
            repo_did(i),
            rev(i)
        ));
        if let Some(active) = active {
            body.push_str(&format!(",\"active\":{active}"));
        }
        if let Some(status) = status {
            body.push_str(&format!(",\"status\":\"{status}\""));
        }
        body.push('}');
    }
    body.push_str("]}");
    body
}

fn query_value<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn answer(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

impl ListReposServer {
    /// Serves a listing of `total` repos on a free loopback port.
    pub async fn start(total: u64) -> Self {
        Self::start_paced(total, Duration::ZERO).await
    }

    /// Serves a listing of `total` repos, each page after `page_delay`.
    pub async fn start_paced(total: u64, page_delay: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the listRepos server");
        let addr = listener.local_addr().expect("its address");
        let stats = Arc::new(ServerStats::default());
        let faults: Arc<Mutex<BTreeMap<u64, Fault>>> = Arc::default();
        let (task_stats, task_faults) = (Arc::clone(&stats), Arc::clone(&faults));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (stats, faults) = (Arc::clone(&task_stats), Arc::clone(&task_faults));
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let response = respond(&request, total, &stats, &faults);
                        async move {
                            tokio::time::sleep(page_delay).await;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ListReposServer {
            addr,
            stats,
            faults,
            task,
        }
    }

    /// Answers request number `request` (0-based, counting every request) with `fault`.
    pub fn fault_at(&self, request: u64, fault: Fault) {
        self.faults.lock().expect("faults").insert(request, fault);
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn respond(
    request: &Request<Incoming>,
    total: u64,
    stats: &ServerStats,
    faults: &Mutex<BTreeMap<u64, Fault>>,
) -> Response<Full<Bytes>> {
    let number = stats.requests.fetch_add(1, Ordering::SeqCst);
    if request.uri().path() != "/xrpc/com.atproto.sync.listRepos" {
        return answer(StatusCode::NOT_FOUND, "not found");
    }
    let query = request.uri().query().unwrap_or_default();
    let limit: u64 = query_value(query, "limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let cursor: Option<u64> = query_value(query, "cursor").and_then(|v| v.parse().ok());
    stats.cursors.lock().expect("cursors").push(cursor);
    let fault = faults.lock().expect("faults").remove(&number);
    match fault {
        Some(Fault::Status(code, retry_after)) => {
            let mut response = answer(
                StatusCode::from_u16(code).expect("a status code"),
                "{\"error\":\"RateLimitExceeded\"}",
            );
            if let Some(secs) = retry_after {
                response.headers_mut().insert(
                    hyper::header::RETRY_AFTER,
                    hyper::header::HeaderValue::from(secs),
                );
            }
            return response;
        }
        Some(Fault::Oversized(bytes)) => {
            let mut body = page_body(0, 1, total).into_bytes();
            body.resize(bytes, b' ');
            return answer(StatusCode::OK, body);
        }
        Some(Fault::Malformed) => {
            return answer(StatusCode::OK, "{\"repos\":[{\"did\":12}]");
        }
        None => {}
    }
    let start = cursor.unwrap_or(0).min(total);
    let end = (start + limit).min(total);
    stats.pages_served.fetch_add(1, Ordering::SeqCst);
    stats.repos_served.fetch_add(end - start, Ordering::SeqCst);
    if end == total {
        stats.last_page_served.store(true, Ordering::SeqCst);
    }
    answer(StatusCode::OK, page_body(start, end, total))
}
