//! Named keys with rights and limits (`inhaus keys ...`, `serve --key-store`): keys are shown once
//! and stored hashed; a key may use only its models (403, and `/v1/models` lists only those);
//! over its requests per minute or its requests at once it gets 429 with `Retry-After` while other
//! keys go on; a revoked key is refused without a restart.
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
