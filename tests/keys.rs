//! Named keys with rights and limits (`inhaus keys ...`, `serve --key-store`): keys are shown once
//! and stored hashed; a key may use only its models (403, and `/v1/models` lists only those);
//! over its requests per minute or its requests at once it gets 429 with `Retry-After` while other
//! keys go on; the same for tokens per minute and per day (which a restart does not reset); one
//! key's queue does not hold back another key's request; a revoked key is refused without a restart,
//! and a rotated key's old secret no longer works.
mod common;
use common::server::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn keys_cli(args: &[&str], store: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_inhaus"))
        .arg("keys")
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .expect("run inhaus keys");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn create(store: &Path, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["create", "--name", name];
    args.extend_from_slice(extra);
    let (ok, key, err) = keys_cli(&args, store);
    assert!(ok && key.starts_with("inh-"), "{err}");
    key
}

fn store_path(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inhaus-keys-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d.join("keys.json")
}

fn call(srv: &Server, key: &str, path: &str, body: Option<Value>) -> (u16, String, String) {
    let body = body.map(|b| b.to_string());
    let method = if body.is_some() { "POST" } else { "GET" };
    request(
        &srv.addr,
        method,
        path,
        body.as_deref(),
        &format!("Authorization: Bearer {key}\r\n"),
    )
}

fn chat() -> Value {
    json!({"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
}

#[test]
fn keys_are_shown_once_stored_hashed_and_held_to_their_rights_and_limits() {
    let store = store_path("rights");
    let open = create(&store, "buchhaltung", &[]);
    let narrow = create(&store, "praktikum", &["--models", "some-other-model"]);
    let slow = create(&store, "batch", &["--rpm", "2"]);
    let text = std::fs::read_to_string(&store).expect("store");
    for k in [&open, &narrow, &slow] {
        assert!(!text.contains(k.as_str()), "a key is stored in the clear");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&store)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the store is readable by others");
    }
    let (ok, list, _) = keys_cli(&["list"], &store);
    assert!(
        ok && list.contains("praktikum") && !list.contains(&open),
        "{list}"
    );

    let srv = smollm_server(&["--key-store", store.to_str().expect("path")]);
    assert_eq!(
        call(&srv, &open, "/v1/chat/completions", Some(chat())).0,
        200
    );
    assert_eq!(call(&srv, "inh-not-a-key", "/v1/models", None).0, 401);
    // Rights: a model the key may not use is a 403, and the list shows only its models.
    let (status, _, body) = call(&srv, &narrow, "/v1/chat/completions", Some(chat()));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("model_not_allowed"), "{body}");
    let (_, _, listed) = call(&srv, &narrow, "/v1/models", None);
    assert!(!listed.contains(ALIAS), "{listed}");
    let (_, _, listed) = call(&srv, &open, "/v1/models", None);
    assert!(listed.contains(ALIAS), "{listed}");
    // Requests per minute: the third is refused with Retry-After; other keys go on.
    for _ in 0..2 {
        assert_eq!(call(&srv, &slow, "/v1/models", None).0, 200);
    }
    let (status, head, body) = call(&srv, &slow, "/v1/models", None);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("2 requests per minute"), "{body}");
    let retry: u64 = header(&head, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(call(&srv, &open, "/v1/models", None).0, 200);
    // Revoked without a restart.
    let (ok, _, err) = keys_cli(&["revoke", "--name", "buchhaltung"], &store);
    assert!(ok, "{err}");
    let t0 = std::time::Instant::now();
    while call(&srv, &open, "/v1/models", None).0 != 401 {
        assert!(
            t0.elapsed().as_secs() < 10,
            "the revoked key is still served"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = std::fs::remove_dir_all(store.parent().expect("dir"));
}

#[test]
fn a_key_runs_at_most_its_requests_at_once_streams_included() {
    let store = store_path("concurrent");
    let one = create(&store, "einzeln", &["--max-concurrent", "1"]);
    let other = create(&store, "andere", &[]);
    let srv = smollm_server(&["--key-store", store.to_str().expect("path")]);
    let stream = start_stream_as(&srv, 400, &format!("Authorization: Bearer {one}\r\n"));
    let (status, head, body) = call(&srv, &one, "/v1/models", None);
    assert_eq!(
        status, 429,
        "a second request ran beside the stream: {body}"
    );
    assert!(body.contains("at most 1 requests at once") && header(&head, "retry-after").is_some());
    assert_eq!(
        call(&srv, &other, "/v1/models", None).0,
        200,
        "another key is not affected"
    );
    drop(stream); // the client goes away: its place frees
    let t0 = std::time::Instant::now();
    while call(&srv, &one, "/v1/models", None).0 != 200 {
        assert!(t0.elapsed().as_secs() < 10, "the key's place was not freed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = std::fs::remove_dir_all(store.parent().expect("dir"));
}

/// The value of `inhaus:key_tokens_total` for a key and kind (0 when not exported yet).
fn key_tokens(srv: &Server, key: &str, kind: &str) -> u64 {
    let (_, _, body) = http(srv, "GET", "/metrics", None);
    let want = format!("inhaus:key_tokens_total{{key=\"{key}\",kind=\"{kind}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn usage_of(body: &str) -> (u64, u64) {
    let v: Value = serde_json::from_str(body).expect("json");
    (
        v["usage"]["prompt_tokens"].as_u64().expect("prompt_tokens"),
        v["usage"]["completion_tokens"]
            .as_u64()
            .expect("completion_tokens"),
    )
}

fn retry_after(head: &str) -> u64 {
    header(head, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After")
}

#[test]
fn token_quotas_per_minute_and_per_day_count_what_was_used_and_a_day_survives_a_restart() {
    let store = store_path("tokens");
    let minute = create(&store, "minute", &["--tpm", "40"]);
    let day = create(&store, "tag", &["--tokens-per-day", "40"]);
    let other = create(&store, "andere", &[]);
    let long = json!({"model": ALIAS, "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
                      "max_tokens": 12, "ignore_eos": true});
    {
        let srv = smollm_server(&["--key-store", store.to_str().expect("path")]);
        // The first request runs (nothing used yet) and uses more than the quota.
        let (status, _, body) = call(&srv, &minute, "/v1/chat/completions", Some(long.clone()));
        assert_eq!(status, 200, "{body}");
        let (prompt, completion) = usage_of(&body);
        assert!(prompt + completion >= 40, "{prompt} + {completion}");
        // Usage per key, exported under the store's name, as the answer reported it.
        wait_for("key tokens", || {
            key_tokens(&srv, "minute", "completion") == completion
        });
        assert_eq!(key_tokens(&srv, "minute", "prompt"), prompt);
        let (status, head, body) = call(&srv, &minute, "/v1/models", None);
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("40 tokens per minute"), "{body}");
        assert!((1..=60).contains(&retry_after(&head)));
        // Streamed tokens count too.
        let (status, _, body) = call(
            &srv,
            &day,
            "/v1/chat/completions",
            Some(
                json!({"model": ALIAS, "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
                        "max_tokens": 12, "ignore_eos": true, "stream": true}),
            ),
        );
        assert_eq!(status, 200, "{body}");
        wait_for("streamed tokens", || {
            key_tokens(&srv, "tag", "completion") == 12
        });
        let (status, head, body) = call(&srv, &day, "/v1/models", None);
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("40 tokens per day"), "{body}");
        assert!((1..=86_400).contains(&retry_after(&head)));
        assert_eq!(call(&srv, &other, "/v1/models", None).0, 200);
        // Each count is written to the day file right after it is made; a kill may only lose the
        // one being written, so wait for the file to hold the quota's worth.
        let file = store.with_file_name("keys.json.usage.json");
        wait_for("the day file", || {
            std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .and_then(|v| v["tokens"]["tag"].as_u64())
                .is_some_and(|n| n >= 40)
        });
    }
    // A restart does not give the day's quota back.
    let srv = smollm_server(&["--key-store", store.to_str().expect("path")]);
    let (status, _, body) = call(&srv, &day, "/v1/models", None);
    assert_eq!(
        status, 429,
        "the daily quota was reset by a restart: {body}"
    );
    assert_eq!(call(&srv, &other, "/v1/models", None).0, 200);
    let _ = std::fs::remove_dir_all(store.parent().expect("dir"));
}

#[test]
fn a_keys_queue_does_not_hold_back_another_keys_request() {
    let store = store_path("fair");
    let busy = create(&store, "stapel", &[]);
    let single = create(&store, "einzel", &[]);
    let srv = smollm_server(&[
        "--key-store",
        store.to_str().expect("path"),
        "--max-num-seqs",
        "2",
    ]);
    let body =
        json!({"model": ALIAS, "prompt": "Once upon a time", "max_tokens": 48, "ignore_eos": true});
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::<&'static str>::new()));
    let addr = srv.addr.clone();
    let mut threads = Vec::new();
    for _ in 0..10 {
        let (addr, key, body, done) = (addr.clone(), busy.clone(), body.to_string(), done.clone());
        threads.push(std::thread::spawn(move || {
            let auth = format!("Authorization: Bearer {key}\r\n");
            let (status, _, _) = request(&addr, "POST", "/v1/completions", Some(&body), &auth);
            assert_eq!(status, 200);
            done.lock().expect("lock").push("stapel");
        }));
    }
    // All of the busy key's requests are in: two run, eight wait.
    wait_for("the busy key's queue", || {
        metric(&srv, "inhaus:num_requests_waiting") >= 8.0
    });
    let auth = format!("Authorization: Bearer {single}\r\n");
    let (status, _, b) = request(
        &addr,
        "POST",
        "/v1/completions",
        Some(&body.to_string()),
        &auth,
    );
    assert_eq!(status, 200, "{b}");
    let before = done.lock().expect("lock").len();
    // First come first served would run all ten first; fairly it takes the next free seat.
    assert!(
        before <= 3,
        "{before} of the busy key's requests ended before the other key's one"
    );
    for t in threads {
        t.join().expect("thread");
    }
    let _ = std::fs::remove_dir_all(store.parent().expect("dir"));
}

#[test]
fn a_rotated_key_takes_over_from_the_old_secret() {
    let store = store_path("rotate");
    let old = create(&store, "dienst", &[]);
    let (ok, new, err) = keys_cli(&["rotate", "--name", "dienst"], &store);
    assert!(ok && new.starts_with("inh-") && new != old, "{err}");
    let srv = smollm_server(&["--key-store", store.to_str().expect("path")]);
    assert_eq!(call(&srv, &old, "/v1/models", None).0, 401);
    assert_eq!(call(&srv, &new, "/v1/models", None).0, 200);
    let _ = std::fs::remove_dir_all(store.parent().expect("dir"));
}
