//! Running inhaus beside what a company already has: the engine's gauges also under vLLM's names
//! (what Kubernetes' inference gateway reads), off with `--metrics-compat none`; and
//! `--served-model-name`, vLLM's flag for the name clients use.
mod common;
use common::server::*;
use serde_json::json;

fn metrics(srv: &Server) -> String {
    let (status, _, body) = http(srv, "GET", "/metrics", None);
    assert_eq!(status, 200);
    body
}

#[test]
fn the_engine_gauges_are_also_exported_under_vllms_names() {
    let srv = server();
    let (status, _) = post(
        &srv,
        "/v1/completions",
        json!({"model": ALIAS, "prompt": "Once upon a time", "max_tokens": 2}),
    );
    assert_eq!(status, 200);
    let body = metrics(&srv);
    for (ours, theirs) in [
        ("inhaus:num_requests_running", "vllm:num_requests_running"),
        ("inhaus:num_requests_waiting", "vllm:num_requests_waiting"),
        ("inhaus:kv_cache_usage_perc", "vllm:kv_cache_usage_perc"),
    ] {
        let label = format!("{{model_name=\"{ALIAS}\"}}");
        let value = |name: &str| {
            body.lines()
                .find(|l| l.starts_with(&format!("{name}{label} ")))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_string)
                .unwrap_or_else(|| panic!("{name}{label} not in /metrics"))
        };
        assert_eq!(value(ours), value(theirs), "{theirs}");
    }
    let info = body
        .lines()
        .find(|l| l.starts_with("vllm:cache_config_info{"))
        .unwrap_or_else(|| panic!("no vllm:cache_config_info"));
    assert!(
        info.contains("block_size=\"16\"")
            && info.contains("num_gpu_blocks=\"")
            && info.ends_with(" 1"),
        "{info}"
    );
}

#[test]
fn metrics_compat_none_exports_only_inhaus_names() {
    let srv = smollm_server(&["--metrics-compat", "none"]);
    let body = metrics(&srv);
    assert!(body.contains("inhaus:num_requests_running"));
    assert!(
        !body.contains("vllm:"),
        "vLLM names with --metrics-compat none"
    );
}

#[test]
fn served_model_name_is_the_name_clients_use() {
    let srv = smollm_server(&["--served-model-name", "firmen-assistent"]);
    let (status, _, body) = http(&srv, "GET", "/v1/models", None);
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .map(|d| d.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["firmen-assistent"]);
    let (status, v) = post(
        &srv,
        "/v1/chat/completions",
        json!({"model": "firmen-assistent", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["model"], "firmen-assistent");
    let (status, _) = post(
        &srv,
        "/v1/chat/completions",
        json!({"model": ALIAS, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
    );
    assert_eq!(
        status, 404,
        "the catalog name is not served under --served-model-name"
    );
}

/// A GET with a bearer key; returns (status, body).
fn get_with_key(srv: &Server, path: &str, key: &str) -> (u16, String) {
    let (status, _, body) = request(
        &srv.addr,
        "GET",
        path,
        None,
        &format!("Authorization: Bearer {key}\r\n"),
    );
    (status, body)
}

#[test]
fn the_system_card_names_the_models_and_the_configuration_without_secrets() {
    let secret = "sk-card-secret-4711";
    let srv = smollm_server(&["--api-key", secret]);
    let (status, body) = get_with_key(&srv, "/v1/system/card", secret);
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(secret), "the card shows an API key");
    let card: serde_json::Value = serde_json::from_str(&body).expect("json");
    let entry = inhaus::catalog::find(ALIAS).expect("catalog entry");
    let m = &card["models"][0];
    assert_eq!(m["name"], ALIAS);
    assert_eq!(m["weights_sha256"], entry.sha256.as_str());
    assert_eq!(m["license"], entry.license.as_str());
    assert_eq!(m["source"], entry.source.as_str());
    assert!(
        m["quantization"].is_string() && m["context_length"].as_u64() > Some(0),
        "{m}"
    );
    assert_eq!(card["configuration"]["api_keys"], 1);
    assert_eq!(card["server"]["version"], env!("CARGO_PKG_VERSION"));
    let (status, md) = get_with_key(&srv, "/v1/system/card?format=markdown", secret);
    assert_eq!(status, 200);
    assert!(
        md.starts_with("# System card") && md.contains(&entry.sha256),
        "{md}"
    );
    assert!(!md.contains(secret));
    let (status, body) = get_with_key(&srv, "/v1/system/card?format=xml", secret);
    assert_eq!(status, 400, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(err["error"]["param"], "format", "{body}");
    // Behind the key like the rest of the API.
    let (status, _, _) = http(&srv, "GET", "/v1/system/card", None);
    assert_eq!(status, 401);
    // `inhaus card` prints the same models without serving.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inhaus"))
        .args([
            "card",
            "--format",
            "json",
            "--model",
            ALIAS,
            "--kv-cache-memory",
            "64MiB",
        ])
        .args(["--api-key", secret])
        .env_remove("INHAUS_API_KEYS")
        .output()
        .expect("run inhaus card");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(secret));
    let offline: serde_json::Value = serde_json::from_str(&text).expect("card json");
    assert_eq!(offline["models"][0]["weights_sha256"], m["weights_sha256"]);
}
