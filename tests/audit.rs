//! The audit trail of a running server (`--audit-log`): one record per request under 64 concurrent
//! streams, with the key's name (never the key), the client, model, weights, endpoint, tokens,
//! finish reason, status and latency, and no prompt or output text; the chain verifies, survives a
//! `kill -9` and a restart, and the server fails closed (503) while the log cannot be written.
mod common;
use common::server::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

const KEY: &str = "sk-audit-0815";

fn audit_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inhaus-audit-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn audited_server(dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--api-key", KEY, "--audit-log", dir.to_str().expect("path")];
    args.extend_from_slice(extra);
    smollm_server(&args)
}

fn auth() -> String {
    format!("Authorization: Bearer {KEY}\r\n")
}

fn records(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for f in inhaus::audit::files(dir).unwrap_or_default() {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                out.push(v);
            }
        }
    }
    out
}

fn wait_records(dir: &Path, n: usize) -> Vec<Value> {
    let t0 = std::time::Instant::now();
    loop {
        let r = records(dir);
        if r.len() >= n || t0.elapsed().as_secs() > 30 {
            return r;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn audit_cli(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_inhaus"))
        .arg("audit")
        .arg(args[0])
        .arg(dir)
        .args(&args[1..])
        .output()
        .expect("run inhaus audit");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn verify_cli(dir: &Path) -> (bool, String) {
    audit_cli(&["verify"], dir)
}

#[test]
fn every_request_of_64_concurrent_streams_is_recorded_once_without_its_text() {
    let dir = audit_dir("load");
    let srv = audited_server(&dir, &[]);
    let secret_word = "Zwetschgenkuchen";
    std::thread::scope(|s| {
        for i in 0..64 {
            let srv = &srv;
            s.spawn(move || {
                let body = json!({"model": ALIAS, "stream": true, "max_tokens": 6,
                    "messages": [{"role": "user", "content": format!("{secret_word} {i}")}]});
                let head = format!("{}X-Request-Id: audit-{i}\r\n", auth());
                let (status, _, _) = request(
                    &srv.addr,
                    "POST",
                    "/v1/chat/completions",
                    Some(&body.to_string()),
                    &head,
                );
                assert_eq!(status, 200);
            });
        }
    });
    // Unauthenticated calls are recorded too, without a key.
    let (status, _, _) = http(&srv, "GET", "/v1/models", None);
    assert_eq!(status, 401);
    let recs = wait_records(&dir, 65);
    assert_eq!(recs.len(), 65, "one record per request");
    for i in 0..64 {
        let id = format!("audit-{i}");
        let r: Vec<&Value> = recs
            .iter()
            .filter(|r| r["request_id"] == id.as_str())
            .collect();
        assert_eq!(r.len(), 1, "{id}");
        let r = r[0];
        assert_eq!(r["endpoint"], "/v1/chat/completions");
        assert_eq!(r["model"], ALIAS);
        assert_eq!(r["status"], 200);
        assert_eq!(r["key"], inhaus::api::audit_trail::key_name(KEY).as_str());
        assert!(
            r["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("127.0.0.1:")),
            "{r}"
        );
        assert_eq!(r["weights_sha256"].as_str().map(str::len), Some(64));
        assert!(
            r["prompt_tokens"].as_u64() > Some(0) && r["completion_tokens"].as_u64() > Some(0),
            "{r}"
        );
        assert!(
            r["finish_reason"].is_string() && r["latency_ms"].is_number(),
            "{r}"
        );
    }
    assert!(recs
        .iter()
        .any(|r| r["status"] == 401 && r["key"].is_null()));
    let all: String = inhaus::audit::files(&dir)
        .expect("files")
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect();
    assert!(!all.contains(secret_word), "prompt text in the audit log");
    assert!(!all.contains(KEY), "an API key in the audit log");
    let (ok, out) = verify_cli(&dir);
    assert!(ok && out.contains("65 records"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_chain_survives_kill_9_and_a_restart() {
    let dir = audit_dir("kill");
    let mut srv = audited_server(&dir, &[]);
    let pid = srv.child.id().to_string();
    let addr = srv.addr.clone();
    std::thread::scope(|s| {
        for _ in 0..8 {
            let addr = addr.clone();
            s.spawn(move || {
                let body =
                    json!({"model": ALIAS, "prompt": "Once", "max_tokens": 64, "stream": true});
                // The connection dies with the server: the read may fail.
                let _ = std::panic::catch_unwind(|| {
                    request(
                        &addr,
                        "POST",
                        "/v1/completions",
                        Some(&body.to_string()),
                        &auth(),
                    )
                });
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(700));
        let killed = Command::new("kill").args(["-9", &pid]).status();
        assert!(killed.is_ok_and(|s| s.success()));
    });
    let _ = srv.child.wait();
    let (ok, out) = verify_cli(&dir);
    assert!(ok, "after kill -9: {out}");
    drop(srv);
    let srv = audited_server(&dir, &[]);
    let (status, _, _) = request(&srv.addr, "GET", "/v1/models", None, &auth());
    assert_eq!(status, 200);
    let t0 = std::time::Instant::now();
    while !verify_cli(&dir).1.contains("records") || t0.elapsed().as_secs() < 1 {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (ok, out) = verify_cli(&dir);
    assert!(ok, "after the restart: {out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn requests_are_refused_while_the_log_cannot_be_written() {
    let dir = audit_dir("closed");
    // A new file for every record, so that a missing folder shows at the next record.
    let srv = audited_server(&dir, &["--audit-max-file", "1"]);
    let models = || request(&srv.addr, "GET", "/v1/models", None, &auth());
    assert_eq!(models().0, 200);
    wait_records(&dir, 1);
    std::fs::remove_dir_all(&dir).expect("remove the audit folder");
    assert_eq!(models().0, 200); // its record cannot be written
    let t0 = std::time::Instant::now();
    let refused = loop {
        let (status, _, body) = models();
        if status == 503 {
            break body;
        }
        assert!(
            t0.elapsed().as_secs() < 10,
            "still served without an audit log"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(refused.contains("audit_log_unavailable"), "{refused}");
    // Writable again: the refused request's own record goes through, and serving resumes.
    std::fs::create_dir_all(&dir).expect("recreate");
    let t0 = std::time::Instant::now();
    while models().0 != 200 {
        assert!(t0.elapsed().as_secs() < 10, "serving did not resume");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn content_is_kept_encrypted_per_subject_and_forgetting_a_subject_erases_it() {
    let dir = audit_dir("content");
    let srv = audited_server(&dir, &["--audit-content"]);
    let ask = |subject: &str, word: &str| {
        let body = json!({"model": ALIAS, "max_tokens": 4,
            "messages": [{"role": "user", "content": format!("Mein Passwort ist {word}.")}]});
        let head = format!("{}X-Inhaus-Subject: {subject}\r\n", auth());
        let (status, _, _) = request(
            &srv.addr,
            "POST",
            "/v1/chat/completions",
            Some(&body.to_string()),
            &head,
        );
        assert_eq!(status, 200);
    };
    ask("kunde-42", "Apfelstrudel");
    ask("kunde-43", "Kaiserschmarrn");
    wait_records(&dir, 2);
    let raw: String = inhaus::audit::files(&dir)
        .expect("files")
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect();
    for secret in ["Apfelstrudel", "Kaiserschmarrn", "kunde-42", "Passwort"] {
        assert!(
            !raw.contains(secret),
            "{secret} is in the audit files in the clear"
        );
    }
    let (ok, read) = audit_cli(&["read"], &dir);
    assert!(
        ok && read.contains("Apfelstrudel") && read.contains("Kaiserschmarrn"),
        "{read}"
    );
    // The output is kept too (the assistant's text of each record).
    let outputs = read
        .lines()
        .filter(|l| l.contains("\"output\":[{\"text\""))
        .count();
    assert_eq!(outputs, 2, "{read}");
    let (ok, out) = audit_cli(&["forget", "kunde-42"], &dir);
    assert!(ok, "{out}");
    let (ok, read) = audit_cli(&["read"], &dir);
    assert!(
        ok && !read.contains("Apfelstrudel") && read.contains("Kaiserschmarrn"),
        "{read}"
    );
    assert!(read.contains("\"content\":\"erased\""), "{read}");
    // The chain is intact: the records and their ciphertext are unchanged.
    let (ok, out) = verify_cli(&dir);
    assert!(ok && out.contains("2 records"), "{out}");
    let (ok, _) = audit_cli(&["forget", "kunde-42"], &dir);
    assert!(!ok, "forgetting twice says there is nothing");
    let _ = std::fs::remove_dir_all(&dir);
}
