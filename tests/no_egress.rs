//! inhaus never phones home: a server under load (chat, streams, completions, the Responses and
//! Messages APIs, tokenize, metrics, the system card) opens no network connection beyond loopback.
//! Every `connect`, `sendto` and `sendmsg` of the server and its threads is traced with strace and
//! checked; a control run proves the check catches an outbound connection. (Skipped, saying so,
//! where strace is not installed.)
mod common;
use common::server::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn have_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The traced calls that reach beyond this machine: an IPv4 address outside 127/8, or IPv6
/// other than ::1 (IPv4-mapped loopback included as loopback).
fn outbound(trace: &str) -> Vec<String> {
    trace
        .lines()
        .filter(|l| {
            let v4 = l.contains("sa_family=AF_INET,") && !l.contains("inet_addr(\"127.");
            let v6 = l.contains("sa_family=AF_INET6")
                && !l.contains("\"::1\"")
                && !l.contains("\"::ffff:127.");
            v4 || v6
        })
        .map(str::to_string)
        .collect()
}

/// A server run under strace: dropping it stops the server itself first (killing only strace would
/// detach the server and leave it running), also when a test fails.
struct Traced {
    srv: Server,
    tracer: u32,
}

impl Traced {
    fn stop(&mut self, signal: &str) {
        let path = format!("/proc/{0}/task/{0}/children", self.tracer);
        for pid in std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
        {
            let _ = Command::new("kill").args([signal, pid]).status();
        }
        let t0 = std::time::Instant::now();
        while self.srv.child.try_wait().ok().flatten().is_none() && t0.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        self.stop("-KILL");
    }
}

fn strace_cmd(out: &Path) -> Command {
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o"])
        .arg(out)
        .arg("--");
    c
}

#[test]
fn the_check_catches_an_outbound_connection() {
    if !have_strace() {
        eprintln!("SKIPPED: strace is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("inhaus-egress-control-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let trace = dir.join("trace");
    // A UDP "connection" needs no network: connect() on a datagram socket only sets the peer.
    let status = strace_cmd(&trace)
        .args([
            "python3",
            "-c",
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('192.0.2.7', 53))",
        ])
        .status()
        .expect("run strace");
    assert!(status.success());
    let text = std::fs::read_to_string(&trace).expect("trace");
    let found = outbound(&text);
    assert!(
        found.iter().any(|l| l.contains("192.0.2.7")),
        "the control connection was not caught:\n{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_server_under_load_opens_no_connection_beyond_loopback() {
    if !have_strace() {
        eprintln!("SKIPPED: strace is not installed");
        return;
    }
    common::ensure_model(ALIAS);
    let dir = std::env::temp_dir().join(format!("inhaus-egress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let trace = dir.join("trace");
    let mut child = strace_cmd(&trace)
        .arg(env!("CARGO_BIN_EXE_inhaus"))
        .args([
            "serve",
            "--port",
            "0",
            "--model",
            ALIAS,
            "--kv-cache-memory",
            "64MiB",
        ])
        .env_remove("INHAUS_API_KEYS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start strace inhaus serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .expect("read stderr");
        if let Some(rest) = line.strip_prefix("inhaus: listening on http://") {
            break rest.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    let tracer = child.id();
    let mut traced = Traced {
        srv: Server {
            child,
            addr,
            log: Default::default(),
        },
        tracer,
    };
    let srv = &traced.srv;
    let chat =
        json!({"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8});
    let calls = [
        ("/v1/chat/completions", chat.clone()),
        (
            "/v1/chat/completions",
            json!({"stream": true, "model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}),
        ),
        (
            "/v1/completions",
            json!({"model": ALIAS, "prompt": "Once", "max_tokens": 8, "n": 2}),
        ),
        (
            "/v1/responses",
            json!({"model": ALIAS, "input": "Hi", "max_output_tokens": 8}),
        ),
        (
            "/v1/messages",
            json!({"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}),
        ),
        ("/tokenize", json!({"model": ALIAS, "prompt": "Hallo"})),
    ];
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for (path, body) in &calls {
                    let body = body.to_string();
                    let (status, _, text) = request(&srv.addr, "POST", path, Some(&body), "");
                    assert_eq!(status, 200, "{path}: {}", &text[..text.len().min(300)]);
                }
            });
        }
    });
    for path in [
        "/v1/models",
        "/metrics",
        "/health",
        "/ready",
        "/v1/system/card",
    ] {
        let (status, _, _) = http(srv, "GET", path, None);
        assert_eq!(status, 200, "{path}");
    }
    traced.stop("-TERM");
    drop(traced);
    let text = std::fs::read_to_string(&trace).expect("trace");
    let found = outbound(&text);
    assert!(
        found.is_empty(),
        "outbound network calls:\n{}",
        found.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
