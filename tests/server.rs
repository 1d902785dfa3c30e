//! `inhaus serve` as a client sees it over HTTP: OpenAI response shapes, SSE streams that concatenate
//! to the non-streamed text, stop strings never emitted, and OpenAI error objects with the right status
//! for bad input. The server runs as a child process on a free loopback port.
mod common;
use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

const ALIAS: &str = "smollm2-135m-instruct";

struct Server {
    child: Child,
    addr: String,
    /// Every line the server wrote to stderr so far (its log at the default level).
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn log_has(&self, needle: &str) -> bool {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|l| l.contains(needle))
    }

    fn log_lines_with(&self, needle: &str) -> Vec<String> {
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
fn server() -> Server {
    server_with(&["--model", ALIAS, "--kv-cache-memory", "64MiB"])
}

fn server_with(args: &[&str]) -> Server {
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
        if let Some(rest) = line.strip_prefix("inhaus: listening on http://") {
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
fn http(srv: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, String, String) {
    request(&srv.addr, method, path, body, "")
}

/// One HTTP/1.1 request to `addr` with extra header lines (each ending in `\r\n`).
fn request(
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

fn dechunk(mut s: &str) -> String {
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

fn post(srv: &Server, path: &str, body: Value) -> (u16, Value) {
    let (status, _, text) = http(srv, "POST", path, Some(&body.to_string()));
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
    )
}

fn assert_error(status: u16, v: &Value, want_status: u16) {
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
fn sse_events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn health_and_models() {
    let srv = server();
    let (status, _, body) = http(&srv, "GET", "/health", None);
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, _, body) = http(&srv, "GET", "/ready", None);
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ready"}"#));
    let (status, _, body) = http(&srv, "GET", "/v1/models", None);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], ALIAS);
    assert_eq!(v["data"][0]["object"], "model");
}

#[test]
fn chat_answers_with_the_openai_shape() {
    let srv = server();
    let (status, v) = post(
        &srv,
        "/v1/chat/completions",
        json!({ "model": ALIAS, "messages": [{ "role": "user", "content": "What is the capital of Germany?" }], "max_tokens": 20, "temperature": 0, "some_unknown_field": 1 }),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().is_some_and(|s| s.starts_with("chatcmpl-")));
    assert!(v["created"].is_u64());
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert!(c["message"]["refusal"].is_null() && c["logprobs"].is_null());
    assert!(
        c["message"]["content"]
            .as_str()
            .expect("content")
            .contains("Berlin"),
        "{v}"
    );
    assert!(matches!(
        c["finish_reason"].as_str(),
        Some("stop" | "length")
    ));
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(
            u["prompt_tokens"].as_u64().unwrap_or(0) + u["completion_tokens"].as_u64().unwrap_or(0)
        )
    );
}

#[test]
fn streamed_text_concatenates_to_the_non_streamed_text() {
    let srv = server();
    let req = json!({ "model": ALIAS, "prompt": "The capital of France is", "max_tokens": 16, "temperature": 0 });
    let (status, full) = post(&srv, "/v1/completions", req.clone());
    assert_eq!(status, 200, "{full}");
    let mut sreq = req;
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({ "include_usage": true });
    let (status, head, body) = http(&srv, "POST", "/v1/completions", Some(&sreq.to_string()));
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("text/event-stream"),
        "{head}"
    );
    let events = sse_events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, full["choices"][0]["text"].as_str().expect("text"));
    let finishes = chunks
        .iter()
        .filter(|c| c["choices"][0]["finish_reason"].is_string())
        .count();
    assert_eq!(finishes, 1, "exactly one chunk carries finish_reason");
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], full["usage"]);
}

#[test]
fn chat_stream_starts_with_the_role() {
    let srv = server();
    let req = json!({ "model": ALIAS, "messages": [{ "role": "user", "content": "Say hi" }], "max_tokens": 5, "stream": true });
    let (status, _, body) = http(&srv, "POST", "/v1/chat/completions", Some(&req.to_string()));
    assert_eq!(status, 200);
    let events = sse_events(&body);
    let first: Value = serde_json::from_str(&events[0]).expect("JSON");
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
}

#[test]
fn stop_strings_end_the_text_and_are_not_emitted() {
    let srv = server();
    let base = json!({ "model": ALIAS, "prompt": "The capital of France is", "max_tokens": 20, "temperature": 0 });
    let (_, full) = post(&srv, "/v1/completions", base.clone());
    let text = full["choices"][0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    // Stop at the third word of the greedy continuation, whatever it is.
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    assert!(words.len() > 3, "continuation too short: {text:?}");
    let stop = words[2].trim_end().to_string();
    let mut req = base;
    req["stop"] = json!([stop]);
    let (status, v) = post(&srv, "/v1/completions", req);
    assert_eq!(status, 200);
    let got = v["choices"][0]["text"].as_str().expect("text");
    assert!(!got.contains(&stop), "stop string emitted: {got:?}");
    assert!(
        text.starts_with(got) && text[got.len()..].starts_with(&stop),
        "{got:?} vs {text:?}"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[test]
fn bad_input_gets_openai_errors() {
    let srv = server();
    let (status, _, body) = http(&srv, "POST", "/v1/chat/completions", Some("{not json"));
    assert_error(
        status,
        &serde_json::from_str(&body).expect("JSON error"),
        400,
    );
    let (s, v) = post(&srv, "/v1/chat/completions", json!({ "messages": 5 }));
    assert_error(s, &v, 400);
    let (s, v) = post(&srv, "/v1/chat/completions", json!({ "model": ALIAS }));
    assert_error(s, &v, 400);
    let (s, v) = post(
        &srv,
        "/v1/completions",
        json!({ "model": "no-such-model", "prompt": "x" }),
    );
    assert_error(s, &v, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    let (s, v) = post(
        &srv,
        "/v1/completions",
        json!({ "model": ALIAS, "prompt": "x", "temperature": 5 }),
    );
    assert_error(s, &v, 400);
    assert_eq!(v["error"]["param"], "temperature");
    let (s, v) = post(
        &srv,
        "/v1/completions",
        json!({ "model": ALIAS, "prompt": "x", "max_tokens": 100000000 }),
    );
    assert_error(s, &v, 400);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let (s, v) = post(
        &srv,
        "/v1/completions",
        json!({ "model": ALIAS, "prompt": [1, 2, 99999999] }),
    );
    assert_error(s, &v, 400);
    let (s, v) = post(
        &srv,
        "/v1/chat/completions",
        json!({ "model": ALIAS, "messages": [{ "role": "wizard", "content": "x" }] }),
    );
    assert_error(s, &v, 400);
    let (status, _, body) = http(&srv, "GET", "/v1/nothing-here", None);
    assert_error(
        status,
        &serde_json::from_str(&body).expect("JSON error"),
        404,
    );
}

#[test]
fn config_file_sets_keys_and_limits_and_flags_override_it() {
    let dir = std::env::temp_dir().join(format!("inhaus-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let keys = dir.join("keys.txt");
    std::fs::write(&keys, "# team keys\nsk-file-key\n\n").expect("write keys");
    let cfg = dir.join("inhaus.toml");
    std::fs::write(
        &cfg,
        format!(
            "models = [\"{ALIAS}\"]\nkv_cache_memory = \"64MiB\"\nmax_body = \"2KiB\"\nmax_num_seqs = 4\napi_key_file = \"{}\"\nport = 1\n",
            keys.display()
        ),
    )
    .expect("write config");
    // `--port 0` on the command line overrides the file's port 1.
    let srv = server_with(&["--config", cfg.to_str().expect("utf-8 path")]);
    let key = "Authorization: Bearer sk-file-key\r\n";
    let models = |headers: &str| request(&srv.addr, "GET", "/v1/models", None, headers);
    let (status, _, body) = models("");
    assert_eq!(status, 401, "no key: {body}");
    assert_eq!(models("Authorization: Bearer sk-wrong\r\n").0, 401);
    assert_eq!(models(key).0, 200);
    let (status, _, body) = http(&srv, "GET", "/health", None);
    assert_eq!(status, 200, "health stays public: {body}");
    // The 2 KiB body limit from the file: a bigger body is a 413 error object.
    let big = json!({ "model": ALIAS, "prompt": "a".repeat(4096) }).to_string();
    let (status, _, body) = request(&srv.addr, "POST", "/v1/completions", Some(&big), key);
    assert_error(
        status,
        &serde_json::from_str(&body).expect("an OpenAI error object"),
        413,
    );
    // n above max_num_seqs (4, from the file) is refused up front.
    let body = json!({ "model": ALIAS, "prompt": "x", "n": 5, "max_tokens": 1 }).to_string();
    let (status, _, text) = request(&srv.addr, "POST", "/v1/completions", Some(&body), key);
    assert_eq!(status, 400, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The value of an unlabelled-by-us engine gauge in /metrics (the sample with this model's label).
fn metric(srv: &Server, name: &str) -> f64 {
    let (status, _, body) = http(srv, "GET", "/metrics", None);
    assert_eq!(status, 200);
    body.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{body}"))
}

/// Sends a streaming request and returns the connection once the first content chunk arrived.
fn start_stream(srv: &Server, max_tokens: usize) -> BufReader<TcpStream> {
    let body = json!({ "model": ALIAS, "prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": true, "stream": true }).to_string();
    let mut s = TcpStream::connect(&srv.addr).expect("connect");
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
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

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !ok() {
        assert!(t0.elapsed().as_secs() < 20, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_client_that_disconnects_cancels_its_generation() {
    let srv = server();
    let conn = start_stream(&srv, 2000);
    assert_eq!(metric(&srv, "inhaus:num_requests_running"), 1.0);
    drop(conn);
    wait_for("the sequence to leave", || {
        metric(&srv, "inhaus:num_requests_running") == 0.0
    });
    let generated = metric(&srv, "inhaus:generation_tokens_total");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        metric(&srv, "inhaus:generation_tokens_total"),
        generated,
        "generation goes on after the client left"
    );
    assert!(generated < 2000.0, "{generated} tokens: it ran to the end");
    assert_eq!(metric(&srv, "inhaus:kv_cache_usage_perc"), 0.0);
}

#[test]
fn a_request_past_the_timeout_gets_408_and_is_cancelled() {
    let srv = server_with(&[
        "--model",
        ALIAS,
        "--kv-cache-memory",
        "64MiB",
        "--request-timeout-secs",
        "1",
    ]);
    let (status, v) = post(
        &srv,
        "/v1/completions",
        json!({ "model": ALIAS, "prompt": "Once upon a time", "max_tokens": 2000, "ignore_eos": true }),
    );
    assert_error(status, &v, 408);
    wait_for("the sequence to leave", || {
        metric(&srv, "inhaus:num_requests_running") == 0.0
    });
}

#[test]
fn sigterm_lets_running_streams_finish_then_exits() {
    let mut srv = server();
    let mut conn = start_stream(&srv, 150);
    let status = Command::new("kill")
        .args(["-TERM", &srv.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    // The running stream still completes: all its tokens, one finish chunk, [DONE].
    let mut rest = String::new();
    conn.read_to_string(&mut rest)
        .expect("read the rest of the stream");
    let body = dechunk_lenient(&rest);
    let events = sse_events(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{body}");
    assert!(
        events
            .iter()
            .any(|e| e.contains("\"finish_reason\":\"length\"")),
        "{body}"
    );
    // Then the server exits by itself, successfully, and takes no new connections.
    let t0 = std::time::Instant::now();
    let code = loop {
        if let Some(c) = srv.child.try_wait().expect("wait") {
            break c;
        }
        assert!(
            t0.elapsed().as_secs() < 20,
            "the server did not exit after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(code.success(), "exit status {code}");
    assert!(TcpStream::connect(&srv.addr).is_err());
}

/// SSE lines from a chunked body that may start mid-chunk (the caller already read its head).
fn dechunk_lenient(raw: &str) -> String {
    raw.lines()
        .filter(|l| l.starts_with("data: ") || l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_full_queue_answers_429_with_retry_after_and_others_are_served() {
    // One running sequence and one waiting: a third concurrent request is refused at once.
    let srv = server_with(&[
        "--model",
        ALIAS,
        "--kv-cache-memory",
        "64MiB",
        "--max-num-seqs",
        "1",
        "--max-waiting",
        "1",
    ]);
    let first = start_stream(&srv, 400);
    let body = json!({ "model": ALIAS, "prompt": "Hello", "max_tokens": 4, "ignore_eos": true })
        .to_string();
    let second = {
        let addr = srv.addr.clone();
        let body = body.clone();
        std::thread::spawn(move || request(&addr, "POST", "/v1/completions", Some(&body), ""))
    };
    wait_for("the second request to wait", || {
        metric(&srv, "inhaus:num_requests_waiting") == 1.0
    });
    let (status, head, text) = http(&srv, "POST", "/v1/completions", Some(&body));
    let v: Value = serde_json::from_str(&text).expect("JSON error");
    assert_error(status, &v, 429);
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    drop(first);
    let (status, _, text) = second.join().expect("second client");
    assert_eq!(status, 200, "the waiting request is served: {text}");
}

/// The value of header `name` in a response head, if present.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The value of label `name` in one Prometheus sample line.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

#[test]
fn callers_cannot_invent_metric_labels() {
    let srv = server();
    let (status, _, _) = http(&srv, "FOOBAR", "/health", None);
    assert_eq!(status, 405);
    http(&srv, "FOOBAR", "/no/such/path-7f3a", None);
    http(&srv, "get", "/v1/models", None);
    http(&srv, "GET", "/random-9c1e?x=1", None);
    http(&srv, "GET", "/v1/models/some-model-5e6f", None);
    let (status, v) = post(
        &srv,
        "/v1/completions",
        json!({ "model": "no-such-model-b4d2", "prompt": "x" }),
    );
    assert_error(status, &v, 404);
    let (status, _, body) = http(&srv, "GET", "/metrics", None);
    assert_eq!(status, 200);
    for made_up in ["FOOBAR", "\"get\"", "7f3a", "9c1e", "5e6f", "b4d2"] {
        assert!(
            !body.contains(made_up),
            "{made_up} from a request became a label:\n{body}"
        );
    }
    let methods = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other",
    ];
    let routes = [
        "/v1/models",
        "/v1/models/{*id}",
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/tokenize",
        "/detokenize",
        "/health",
        "/ready",
        "/metrics",
        "unmatched",
    ];
    let samples: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("inhaus:http_requests_total{"))
        .collect();
    assert!(!samples.is_empty(), "{body}");
    for line in &samples {
        let method = label(line, "method").unwrap_or("");
        let route = label(line, "route").unwrap_or("");
        assert!(methods.contains(&method), "method label {method:?}: {line}");
        assert!(routes.contains(&route), "route label {route:?}: {line}");
    }
    let has = |m: &str, r: &str| {
        samples
            .iter()
            .any(|l| label(l, "method") == Some(m) && label(l, "route") == Some(r))
    };
    assert!(has("other", "/health"), "{body}");
    assert!(has("other", "unmatched"), "{body}");
    assert!(has("GET", "unmatched"), "{body}");
    assert!(has("GET", "/v1/models/{*id}"), "{body}");
    // Model labels come only from the served set.
    for line in body.lines().filter(|l| l.contains("model=\"")) {
        assert_eq!(label(line, "model"), Some(ALIAS), "{line}");
    }
}

#[test]
fn every_response_carries_a_request_id_that_the_log_shows() {
    let srv = server();
    // A request id the client sends comes back and is logged.
    let (status, head, _) = request(
        &srv.addr,
        "GET",
        "/health",
        None,
        "X-Request-Id: client-chosen-42\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "x-request-id").as_deref(),
        Some("client-chosen-42")
    );
    // Without one (or with one unfit for a log line), the server makes one up; errors carry it too.
    let long = "x".repeat(300);
    let mut made = Vec::new();
    for extra in [String::new(), format!("X-Request-Id: {long}\r\n")] {
        let (status, head, _) = request(&srv.addr, "GET", "/no-such-route", None, &extra);
        assert_eq!(status, 404);
        let id = header(&head, "x-request-id").expect("x-request-id on a 404");
        assert!(!id.is_empty() && id.len() <= 128 && id != long, "{id}");
        made.push(id);
    }
    assert_ne!(made[0], made[1], "request ids are unique");
    // The default log level shows one line per request, with its id.
    wait_for("the request log lines", || {
        srv.log_has("client-chosen-42") && made.iter().all(|id| srv.log_has(id))
    });
    let lines = srv.log_lines_with("client-chosen-42");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("/health") && lines[0].contains("200"),
        "{lines:?}"
    );
}

/// Reads from `s` until the end of a response head (or the connection ends); returns the bytes.
fn read_head(s: &mut TcpStream) -> String {
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
fn idle_connection(srv: &Server) -> TcpStream {
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
fn closed_after(mut s: TcpStream) -> Option<std::time::Duration> {
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

#[test]
fn slow_headers_and_idle_connections_are_closed_after_the_header_timeout() {
    let srv = server_with(&[
        "--model",
        ALIAS,
        "--kv-cache-memory",
        "64MiB",
        "--header-read-timeout-secs",
        "1",
    ]);
    // Half a header line, then nothing.
    let mut s = TcpStream::connect(&srv.addr).expect("connect");
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .expect("send");
    let took = closed_after(s).expect("a connection with unfinished headers stays open");
    assert!(took.as_secs_f64() < 4.0, "closed only after {took:?}");
    // A kept-alive connection that sends no next request.
    let took = closed_after(idle_connection(&srv)).expect("an idle connection stays open");
    assert!(took.as_secs_f64() < 4.0, "closed only after {took:?}");
    // Meanwhile the server answers.
    assert_eq!(http(&srv, "GET", "/health", None).0, 200);
}

#[test]
fn beyond_max_connections_a_new_connection_waits_for_a_free_slot() {
    let srv = server_with(&[
        "--model",
        ALIAS,
        "--kv-cache-memory",
        "64MiB",
        "--max-connections",
        "2",
    ]);
    let first = idle_connection(&srv);
    let _second = idle_connection(&srv);
    let mut third = TcpStream::connect(&srv.addr).expect("connect");
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    third
        .set_read_timeout(Some(std::time::Duration::from_millis(1500)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    match third.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a third connection was served beyond --max-connections 2: {other:?}"),
    }
    // One held connection closes: the waiting one is accepted and answered.
    drop(first);
    third
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let head = read_head(&mut third);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[test]
fn a_body_that_trickles_in_gets_408_within_the_request_timeout() {
    let srv = server_with(&[
        "--model",
        ALIAS,
        "--kv-cache-memory",
        "64MiB",
        "--request-timeout-secs",
        "1",
    ]);
    // Content-Length promises 1000 bytes; a few arrive, then one every 200 ms.
    let mut s = TcpStream::connect(&srv.addr).expect("connect");
    s.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": ",
    )
    .expect("send");
    let t0 = std::time::Instant::now();
    let mut w = s.try_clone().expect("clone");
    let trickle = std::thread::spawn(move || {
        for _ in 0..60 {
            std::thread::sleep(std::time::Duration::from_millis(200));
            if w.write_all(b" ").is_err() {
                break;
            }
        }
    });
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let head = read_head(&mut s);
    let took = t0.elapsed();
    assert!(head.starts_with("HTTP/1.1 408"), "{head:?} after {took:?}");
    assert!(took.as_secs_f64() < 3.0, "408 only after {took:?}");
    drop(s);
    let _ = trickle.join();
    assert_eq!(http(&srv, "GET", "/health", None).0, 200);
}
