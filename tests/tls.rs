//! HTTPS with a self-signed certificate (`--tls-cert`, `--tls-key`), a renewed certificate taking
//! effect without a restart, and the CORS allow-list (`--cors-origin`). The client is curl, the
//! certificates come from openssl (both skipped, saying so, where missing).
mod common;
use common::server::*;
use std::path::Path;
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new(tool)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// A self-signed certificate for localhost / 127.0.0.1 with this common name.
fn self_signed(dir: &Path, name: &str, cn: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "2", "-subj", &format!("/CN={cn}")])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// curl's exit status and body for GET https://ADDR/PATH trusting `ca`.
fn curl_https(addr: &str, path: &str, ca: &Path) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "--cacert"])
        .arg(ca)
        .arg(format!("https://{addr}{path}"))
        .output()
        .expect("run curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn tls_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("inhaus-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

#[test]
fn https_with_a_self_signed_certificate_and_a_renewal_without_restart() {
    if !have("openssl") || !have("curl") {
        eprintln!("SKIPPED: openssl or curl is not installed");
        return;
    }
    let dir = tls_dir("serve");
    let (cert, key) = self_signed(&dir, "first", "inhaus-first");
    let srv = smollm_server(&[
        "--tls-cert",
        cert.to_str().expect("path"),
        "--tls-key",
        key.to_str().expect("path"),
    ]);
    let (ok, body) = curl_https(&srv.addr, "/health", &cert);
    assert!(ok && body.contains("ok"), "{body}");
    // A generation over TLS.
    let out = Command::new("curl")
        .args(["-s", "--max-time", "60", "--cacert"])
        .arg(&cert)
        .args(["-H", "Content-Type: application/json", "-d"])
        .arg(format!(
            r#"{{"model": "{ALIAS}", "messages": [{{"role": "user", "content": "Hi"}}], "max_tokens": 4}}"#
        ))
        .arg(format!("https://{}/v1/chat/completions", srv.addr))
        .output()
        .expect("curl");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(reply["object"], "chat.completion", "{reply}");
    // Plain HTTP on the TLS port gets no answer.
    let plain = Command::new("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://{}/health", srv.addr))
        .output()
        .expect("curl");
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("\"ok\""));
    // Renew: a new certificate and key in place of the old files.
    let first = dir.join("first-copy.crt");
    std::fs::copy(&cert, &first).expect("copy");
    let (cert2, key2) = self_signed(&dir, "second", "inhaus-second");
    std::fs::copy(&key2, &key).expect("copy key");
    std::fs::copy(&cert2, &cert).expect("copy cert");
    let t0 = std::time::Instant::now();
    loop {
        let (ok, _) = curl_https(&srv.addr, "/health", &cert2);
        if ok {
            break;
        }
        assert!(
            t0.elapsed().as_secs() < 15,
            "the renewed certificate was not served"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // The old certificate is no longer what the server shows.
    let (ok, _) = curl_https(&srv.addr, "/health", &first);
    assert!(!ok, "the old certificate is still served");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_certificate_stops_the_start_with_a_clear_message() {
    let dir = tls_dir("bad");
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, "not a certificate").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_inhaus"))
        .args(["serve", "--port", "0", "--model", ALIAS, "--tls-key"])
        .arg(&cert)
        .arg("--tls-cert")
        .arg(&cert)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cert.pem"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn preflight(srv: &Server, origin: &str) -> String {
    let head = format!(
        "Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\n"
    );
    let (_, headers, _) = request(&srv.addr, "OPTIONS", "/v1/chat/completions", None, &head);
    headers.to_ascii_lowercase()
}

#[test]
fn cors_answers_only_the_allowed_origins() {
    let srv = smollm_server(&[
        "--api-key",
        "sk-cors",
        "--cors-origin",
        "https://intranet.example",
    ]);
    let h = preflight(&srv, "https://intranet.example");
    assert!(
        h.contains("access-control-allow-origin: https://intranet.example"),
        "{h}"
    );
    assert!(h.contains("authorization"), "{h}");
    let h = preflight(&srv, "https://evil.example");
    assert!(!h.contains("access-control-allow-origin"), "{h}");
    // A real request from the allowed origin carries the header (and still needs its key).
    let (status, headers, _) = request(
        &srv.addr,
        "GET",
        "/v1/models",
        None,
        "Origin: https://intranet.example\r\nAuthorization: Bearer sk-cors\r\n",
    );
    assert_eq!(status, 200);
    assert!(headers
        .to_ascii_lowercase()
        .contains("access-control-allow-origin: https://intranet.example"));
    // Without --cors-origin: no CORS headers at all.
    let plain = server();
    assert!(!preflight(&plain, "https://intranet.example").contains("access-control-allow-origin"));
}
