//! One streaming request and its timeline: sends a turn, reads the server-sent events as they come
//! and times them as vLLM's `bench serve` does (TTFT at the first non-empty content delta, ITL
//! between successive content deltas, output tokens from the final chunk's `usage`), or says which
//! kind of error it met.
use super::workload::{Endpoint, Turn};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Why a request did not count as completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server answered with this HTTP status.
    Http(u16),
    /// No connection, or it failed before the response began.
    Connection,
    /// No end of the stream within `--timeout`.
    Timeout,
    /// The stream broke off, ended without `[DONE]`, carried an error event or unparsable data.
    Stream,
    /// Fewer tokens than asked for although `ignore_eos` was sent.
    ShortOutput,
}

impl ErrorKind {
    /// The key under which reports count this kind.
    pub fn key(&self) -> String {
        match self {
            ErrorKind::Http(s) => format!("http_{s}"),
            ErrorKind::Connection => "connection".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Stream => "stream".into(),
            ErrorKind::ShortOutput => "short_output".into(),
        }
    }
}

/// The timeline of a completed request, in seconds from sending it.
#[derive(Clone, Debug, Default)]
pub struct Timing {
    pub ttft: f64,
    pub e2e: f64,
    /// Gaps between successive content deltas.
    pub itl: Vec<f64>,
    pub output_tokens: usize,
    pub prompt_tokens: usize,
    /// The server sent no `usage`: output tokens are the number of content deltas.
    pub usage_missing: bool,
}

/// One request's result: when it was sent and ended (seconds from the start of its sweep point).
#[derive(Clone, Debug)]
pub struct Outcome {
    pub sent: f64,
    pub ended: f64,
    pub result: Result<Timing, (ErrorKind, String)>,
}

/// Sends requests to one server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    url: String,
    model: String,
    api_key: Option<String>,
    endpoint: Endpoint,
    /// Sent as `temperature` when given.
    temperature: Option<f64>,
    timeout: Duration,
}

/// `base` + the endpoint's path, unless `base` already names an endpoint; `.../v1` is accepted.
pub fn endpoint_url(base: &str, endpoint: Endpoint) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/completions") {
        return base.to_string();
    }
    match base.strip_suffix("/v1") {
        Some(root) => format!("{root}{}", endpoint.path()),
        None => format!("{base}{}", endpoint.path()),
    }
}

impl Client {
    pub fn new(
        base_url: &str,
        model: &str,
        api_key: Option<String>,
        endpoint: Endpoint,
        temperature: Option<f64>,
        timeout: Duration,
    ) -> Result<Client, reqwest::Error> {
        // A fresh connection per request: a pooled keep-alive connection that the server closes
        // just as it is reused fails the request with no fault of the server's (llama-server does
        // this under load); a loopback connect adds well under a millisecond to TTFT.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .tcp_nodelay(true)
            .build()?;
        Ok(Client {
            http,
            url: endpoint_url(base_url, endpoint),
            model: model.to_string(),
            api_key,
            endpoint,
            temperature,
            timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends `turn` and reads its stream to the end; `origin` is the start of the sweep point.
    pub async fn send(&self, turn: &Turn, origin: Instant) -> Outcome {
        let start = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.stream(turn, start)).await {
            Ok(r) => r,
            Err(_) => Err((
                ErrorKind::Timeout,
                format!("no end of stream within {:?}", self.timeout),
            )),
        };
        Outcome {
            sent: start.duration_since(origin).as_secs_f64(),
            ended: origin.elapsed().as_secs_f64(),
            result,
        }
    }

    async fn stream(&self, turn: &Turn, start: Instant) -> Result<Timing, (ErrorKind, String)> {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .body(
                turn.body(&self.model, self.endpoint, self.temperature)
                    .to_string(),
            );
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| (ErrorKind::Connection, error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let text: String = text.chars().take(200).collect();
            return Err((ErrorKind::Http(status.as_u16()), text));
        }
        let mut sse = SseParser::default();
        let mut t = Timing::default();
        let mut last: Option<f64> = None;
        let mut deltas = 0usize;
        let mut usage: Option<(usize, usize)> = None;
        let mut done = false;
        while !done {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Err((ErrorKind::Stream, error_chain(&e))),
            };
            let now = start.elapsed().as_secs_f64();
            for data in sse.push(&chunk) {
                if data.trim() == "[DONE]" {
                    done = true;
                    break;
                }
                let v: Value = serde_json::from_str(&data)
                    .map_err(|e| (ErrorKind::Stream, format!("bad event data: {e}")))?;
                if let Some(err) = v.get("error") {
                    return Err((ErrorKind::Stream, format!("error event: {err}")));
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
                    usage = Some((n("completion_tokens"), n("prompt_tokens")));
                }
                if has_content(&v) {
                    deltas += 1;
                    match last {
                        None => t.ttft = now,
                        Some(prev) => t.itl.push(now - prev),
                    }
                    last = Some(now);
                }
            }
        }
        if !done {
            return Err((ErrorKind::Stream, "stream ended without [DONE]".into()));
        }
        t.e2e = start.elapsed().as_secs_f64();
        match usage {
            Some((out, prompt)) => {
                t.output_tokens = out;
                t.prompt_tokens = prompt;
            }
            None => {
                t.output_tokens = deltas;
                t.usage_missing = true;
            }
        }
        if deltas == 0 {
            return Err((ErrorKind::ShortOutput, "no content in the stream".into()));
        }
        if turn.exact_len && !t.usage_missing && t.output_tokens < turn.max_tokens {
            return Err((
                ErrorKind::ShortOutput,
                format!(
                    "{} of {} tokens (ignore_eos sent)",
                    t.output_tokens, turn.max_tokens
                ),
            ));
        }
        Ok(t)
    }
}

/// Whether a chunk carries generated text: chat content, reasoning, tool-call arguments, or
/// completions text.
fn has_content(v: &Value) -> bool {
    let Some(choice) = v.pointer("/choices/0") else {
        return false;
    };
    let non_empty = |p: &str| {
        choice
            .pointer(p)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    if non_empty("/text") || non_empty("/delta/content") || non_empty("/delta/reasoning_content") {
        return true;
    }
    choice
        .pointer("/delta/tool_calls")
        .and_then(Value::as_array)
        .is_some_and(|calls| {
            calls.iter().any(|c| {
                c.pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
                    || c.pointer("/function/name").is_some()
            })
        })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Server-sent events: splits the byte stream into events and returns their `data` fields.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Vec<String>,
}

impl SseParser {
    /// Feeds bytes; returns the data of every event completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(self.data.join("\n"));
                    self.data.clear();
                }
            } else if let Some(d) = line.strip_prefix("data:") {
                self.data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\"").is_empty());
        assert_eq!(
            p.push(b":1}\r\n\r\ndata: [DONE]\n\n"),
            vec!["{\"a\":1}", "[DONE]"]
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            endpoint_url("http://h:1/v1/", Endpoint::Chat),
            "http://h:1/v1/chat/completions"
        );
        assert_eq!(
            endpoint_url("http://h:1", Endpoint::Completions),
            "http://h:1/v1/completions"
        );
    }
}
