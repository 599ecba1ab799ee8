//! A test server on a free port with the default model, and a small HTTP/1.1 client over
//! `std::net` (one request per connection).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use kvpress_server::{ServeOptions, Server, StoreLocation};
use serde_json::Value;

/// The default model (fetched by `scripts/fetch-model.sh`).
pub fn model() -> kvpress::models::LoadedModel {
    let path =
        kvpress::default_model::require().expect("the default model (scripts/fetch-model.sh)");
    kvpress::models::load_model(&path, None, &candle_core::Device::Cpu).unwrap()
}

/// Options for a test server storing contexts in `store`, on a free port.
pub fn options(store: &Path) -> ServeOptions {
    ServeOptions {
        address: "127.0.0.1:0".parse().unwrap(),
        store: StoreLocation::Dir(store.to_path_buf()),
        shutdown_grace: Duration::from_secs(5),
        ..ServeOptions::default()
    }
}

/// Starts a server.
pub fn start(options: ServeOptions) -> Server {
    Server::start(model(), options).unwrap()
}

/// A response: status, headers (lower-case names) and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of a server-sent event stream.
    pub fn events(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }

    /// The error object's message, checking the error format.
    pub fn error_message(&self) -> String {
        let json = self.json();
        let error = &json["error"];
        assert!(error["type"].is_string(), "no error type: {}", self.body);
        error["message"]
            .as_str()
            .expect("an error message")
            .to_string()
    }
}

/// Sends one request and reads the whole response (chunked bodies decoded).
pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Response {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    if let Some(body) = body {
        // A server may answer (413) before reading a large body, and close.
        let _ = stream.write_all(body);
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw)
}

pub fn get(address: SocketAddr, path: &str) -> Response {
    request(address, "GET", path, None, &[])
}

pub fn post(address: SocketAddr, path: &str, body: &Value) -> Response {
    request(
        address,
        "POST",
        path,
        Some(body.to_string().as_bytes()),
        &[],
    )
}

fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response: {text}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The value of a metric (`name value` line) in `GET /metrics`.
pub fn metric(address: SocketAddr, name: &str) -> f64 {
    let body = get(address, "/metrics").body;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no metric {name} in {body}"))
        .parse()
        .unwrap()
}

/// The needle-haystack context of the README's main command.
pub fn needle_text() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/needle-haystack.txt"
    ))
    .unwrap()
}
