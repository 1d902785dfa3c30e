//! `inhaus serve` as a client sees it over HTTP: OpenAI response shapes, SSE streams that concatenate
//! to the non-streamed text, stop strings never emitted, OpenAI error objects with the right status
//! for bad input, cancellation and shutdown. The server runs as a child process on a free loopback
//! port (tests/common/server.rs); hostile-client tests are in tests/hardening.rs.
mod common;
use common::server::*;
use serde_json::{json, Value};
use std::io::Read;
use std::net::TcpStream;
use std::process::Command;

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

#[test]
fn latency_metrics_count_each_request_once_whatever_its_choices() {
    let srv = server();
    for n in [1, 3] {
        let (status, v) = post(
            &srv,
            "/v1/completions",
            json!({"model": ALIAS, "prompt": "Once upon a time", "max_tokens": 4, "n": n, "temperature": 1.0}),
        );
        assert_eq!(status, 200, "{v}");
    }
    let ttft = metric(&srv, "inhaus:time_to_first_token_seconds_count");
    let e2e = metric(&srv, "inhaus:e2e_request_latency_seconds_count");
    assert_eq!(
        (ttft, e2e),
        (2.0, 2.0),
        "two requests, one TTFT and one latency each"
    );
}

#[test]
fn logprobs_follow_the_text_streamed_or_not_multibyte_and_stop_strings() {
    let srv = server();
    // text_offset counts the same characters streamed and not, with multi-byte text.
    let body = json!({"model": ALIAS, "prompt": "Translate to Japanese: good morning =", "max_tokens": 16,
                      "temperature": 0, "logprobs": 1});
    let (status, whole) = post(&srv, "/v1/completions", body.clone());
    assert_eq!(status, 200, "{whole}");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, _, text) = http(&srv, "POST", "/v1/completions", Some(&streamed.to_string()));
    assert_eq!(status, 200);
    let mut offsets = Vec::new();
    for ev in sse_events(&text) {
        if ev == "[DONE]" {
            continue;
        }
        let v: Value = serde_json::from_str(&ev).expect("chunk JSON");
        for o in v["choices"][0]["logprobs"]["text_offset"]
            .as_array()
            .into_iter()
            .flatten()
        {
            offsets.push(o.clone());
        }
    }
    let want = whole["choices"][0]["logprobs"]["text_offset"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!want.is_empty(), "{whole}");
    assert_eq!(offsets, want, "streamed text_offset differs: {whole}");
    // Tokens cut off by a stop string take their log-probabilities with them.
    let free = post(
        &srv,
        "/v1/completions",
        json!({"model": ALIAS, "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "logprobs": 1}),
    )
    .1;
    let free_text = free["choices"][0]["text"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let words: Vec<&str> = free_text.split_whitespace().collect();
    assert!(words.len() > 4, "{free_text}");
    let stop = format!(" {}", words[3]);
    let (status, v) = post(
        &srv,
        "/v1/completions",
        json!({"model": ALIAS, "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "logprobs": 1, "stop": stop}),
    );
    assert_eq!(status, 200, "{v}");
    let text = v["choices"][0]["text"].as_str().unwrap_or("");
    let tokens: Vec<&str> = v["choices"][0]["logprobs"]["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let joined: String = tokens.concat();
    assert!(joined.starts_with(text), "{joined:?} vs {text:?}");
    let without_last: String = tokens[..tokens.len() - 1].concat();
    assert!(
        without_last.len() < text.len(),
        "a token wholly inside the stop string kept its logprob: {tokens:?} for {text:?}"
    );
}

#[test]
fn sigterm_while_loading_exits_promptly_without_serving() {
    let model = "qwen2.5-coder-0.5b-instruct";
    common::ensure_model(model);
    let mut child = Command::new(env!("CARGO_BIN_EXE_inhaus"))
        .args(["serve", "--port", "0", "--model", model])
        .args(["--kv-cache-memory", "1GiB"])
        .env_remove("INHAUS_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start inhaus serve");
    // Loading the model (and mapping its KV cache) takes seconds; stop it early on.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let t0 = std::time::Instant::now();
    let code = loop {
        if let Some(c) = child.try_wait().expect("wait") {
            break c;
        }
        if t0.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the server did not exit after SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let took = t0.elapsed();
    let mut log = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut log);
    }
    assert!(code.success(), "exit status {code}: {log}");
    assert!(
        !log.contains("listening on"),
        "it finished loading and served first: {log}"
    );
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
}
