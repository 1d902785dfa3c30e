//! A real `inhaus serve` child process for the HTTP tests (tests/server.rs, tests/hardening.rs):
//! started on a free loopback port, killed when its guard drops; raw HTTP/1.1 helpers that see
//! exactly what a client sees (status, headers, chunked bodies, SSE events).
#![allow(dead_code)]
use super::ensure_model;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

pub const ALIAS: &str = "smollm2-135m-instruct";

pub struct Server {
    pub child: Child,
    pub addr: String,
    /// Every line the server wrote to stderr so far (its log at the default level).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn log_has(&self, needle: &str) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|l| l.contains(needle))
    }

    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a server for one test; it is killed when the guard drops (also when the test panics).
pub fn server() -> Server {
    server_with(&["--model", ALIAS, "--kv-cache-memory", "64MiB"])
}

/// A SmolLM2 server with the small KV cache of `server()` and these extra flags.
pub fn smollm_server(extra: &[&str]) -> Server {
    let mut args = vec!["--model", ALIAS, "--kv-cache-memory", "64MiB"];
    args.extend_from_slice(extra);
    server_with(&args)
}

pub fn server_with(args: &[&str]) -> Server {
    ensure_model(ALIAS);
    let mut child = Command::new(env!("CARGO_BIN_EXE_inhaus"))
        .args(["serve", "--port", "0"])
        .args(args)
        .env_remove("INHAUS_API_KEYS")
        .env_remove("INHAUS_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start inhaus serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let log = Arc::new(Mutex::new(Vec::new()));
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .expect("read stderr");
        let rest = line
            .strip_prefix("inhaus: listening on http://")
            .or_else(|| line.strip_prefix("inhaus: listening on https://"));
        if let Some(rest) = rest {
            break rest.trim().to_string();
        }
        log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    Server { child, addr, log }
}

/// One HTTP/1.1 request; returns (status, headers, body).
pub fn http(srv: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, String, String) {
    request(&srv.addr, method, path, body, "")
}

/// One HTTP/1.1 request to `addr` with extra header lines (each ending in `\r\n`).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, head.to_string(), body)
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

pub fn post(srv: &Server, path: &str, body: Value) -> (u16, Value) {
    let (status, _, text) = http(srv, "POST", path, Some(&body.to_string()));
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
    )
}

pub fn assert_error(status: u16, v: &Value, want_status: u16) {
    assert_eq!(status, want_status, "{v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "param and code are present (maybe null): {v}"
    );
}

/// The `data:` payloads of an SSE body.
pub fn sse_events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// The value of an unlabelled-by-us engine gauge in /metrics (the sample with this model's label).
pub fn metric(srv: &Server, name: &str) -> f64 {
    let (status, _, body) = http(srv, "GET", "/metrics", None);
    assert_eq!(status, 200);
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
}

/// Sends a streaming request and returns the connection once the first content chunk arrived.
pub fn start_stream(srv: &Server, max_tokens: usize) -> BufReader<TcpStream> {
    start_stream_as(srv, max_tokens, "")
}

/// `start_stream` with extra request headers (each ending in `\r\n`), e.g. a key.
pub fn start_stream_as(srv: &Server, max_tokens: usize, headers: &str) -> BufReader<TcpStream> {
    let body = json!({ "model": ALIAS, "prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": true, "stream": true }).to_string();
    let mut s = TcpStream::connect(&srv.addr).expect("connect");
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    assert!(
        line.starts_with("HTTP/1.1 200"),
        "the stream was refused: {line}"
    );
    loop {
        line.clear();
        assert!(
            r.read_line(&mut line).expect("read") > 0,
            "stream ended early"
        );
        if line.contains("data: {") {
            return r;
        }
    }
}

pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !ok() {
        assert!(t0.elapsed().as_secs() < 20, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// SSE lines from a chunked body that may start mid-chunk (the caller already read its head).
pub fn dechunk_lenient(raw: &str) -> String {
    raw.lines()
        .filter(|l| l.starts_with("data: ") || l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of header `name` in a response head, if present.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The value of label `name` in one Prometheus sample line.
pub fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// Reads from `s` until the end of a response head (or the connection ends); returns the bytes.
pub fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).to_string()
}

/// A kept-alive connection that has had one `/health` answered (so the server accepted it).
pub fn idle_connection(srv: &Server) -> TcpStream {
    let mut s = TcpStream::connect(&srv.addr).expect("connect");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s
}

/// Waits for the server to close `s`; returns how long that took, or None if it did not within 10 s.
pub fn closed_after(mut s: TcpStream) -> Option<std::time::Duration> {
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let t0 = std::time::Instant::now();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return Some(t0.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(t0.elapsed()),
        }
    }
}
