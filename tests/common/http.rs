//! One plain HTTP GET against the metrics endpoint (`/metrics`, `/health`) on a loopback address.

use std::net::SocketAddr;

/// The whole response (status line, headers, body) of `GET path` on `addr`, read until the server closes.
pub async fn get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("request {path} from {addr}: {e}"));
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .unwrap_or_else(|e| panic!("response to {path} from {addr}: {e}"));
    response
}

/// `get` for tests that are not async.
pub fn get_blocking(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("request {path} from {addr}: {e}"));
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("response to {path} from {addr}: {e}"));
    response
}

/// The status code and body of `GET path` on `addr`.
pub async fn get_status_and_body(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = get(addr, path).await;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status code from {path} on {addr} in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
