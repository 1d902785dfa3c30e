//! The system card: what this server runs and how it is configured, for the technical documentation
//! a deployer hands to an auditor (EU AI Act Art. 11/26): the served models with their source,
//! license, weights' sha256, quantization and context length; the configuration in force (no
//! secrets: API keys are counted, never shown); the version and build; and how data is handled.
//! `GET /v1/system/card` answers JSON, or Markdown with `?format=markdown`.
use super::{AppState, Models};
use crate::catalog;
use serde_json::{json, Value};

/// The configuration part of the card, fixed at start.
pub fn configuration(cfg: &super::ServeConfig) -> Value {
    json!({
        "host": cfg.host,
        "port": cfg.port,
        "api_keys": cfg.api_keys.len(),
        "request_timeout_secs": cfg.request_timeout.map(|d| d.as_secs()),
        "max_body_bytes": cfg.max_body_bytes,
        "kv_cache_bytes_per_model": cfg.kv_cache_bytes,
        "max_num_seqs": cfg.engine.max_num_seqs,
        "max_num_batched_tokens": cfg.engine.max_num_batched_tokens,
        "max_waiting": cfg.engine.max_waiting,
        "max_connections": cfg.conn_limits.max_connections,
        "header_read_timeout_secs": cfg.conn_limits.header_read_timeout.as_secs(),
        "responses_store": cfg.responses_store.as_ref().map(|s| json!({
            "memory_bytes": s.max_bytes, "max_age_secs": s.max_age.as_secs(),
        })),
        "signing_key": cfg.signing_key.is_some(),
        "tls": cfg.tls.is_some(),
        "audit_log": cfg.audit.as_ref().map(|a| json!({
            "dir": a.dir.display().to_string(), "max_file_bytes": a.max_file_bytes,
            "fail_open": a.fail_open, "content": a.content,
        })),
        "cors_origins": cfg.cors_origins,
        "vllm_metric_names": cfg.vllm_metrics,
    })
}

fn catalog_facts(name: &str, alias: Option<&str>) -> Value {
    match alias
        .and_then(catalog::find)
        .or_else(|| catalog::find(name))
    {
        Some(e) => json!({
            "source": e.source, "license": e.license, "family": e.family, "format": e.format,
            "file": e.file, "bytes": e.bytes,
        }),
        None => json!({ "source": null, "license": null }),
    }
}

/// The whole card.
pub fn card(state: &AppState, models: &Models) -> Value {
    let mut list: Vec<Value> = models
        .generative
        .iter()
        .map(|(name, m)| {
            let l = &m.loaded;
            let c = &l.model;
            let alias = l.resolved.entry.map(|e| e.alias.as_str());
            let mut v = catalog_facts(name, alias);
            v["name"] = json!(name);
            v["task"] = json!(if l.chat_template.is_some() {
                "chat"
            } else {
                "completion"
            });
            v["path"] = json!(l.resolved.path.display().to_string());
            v["weights_sha256"] = json!(l.weights_sha256.get());
            v["quantization"] = json!(l.quantization);
            v["architecture"] = json!(c.architecture());
            v["context_length"] = json!(c.context_len());
            v["max_sequence_length"] = json!(m.max_sequence_len());
            v["layers"] = json!(c.n_layers());
            v["vocabulary"] = json!(c.vocab());
            v["kv_cache_blocks"] = json!(m.limits.num_blocks);
            v
        })
        .collect();
    list.extend(models.embedders.iter().map(|(name, e)| {
        let mut v = catalog_facts(name, None);
        v["name"] = json!(name);
        v["task"] = json!("embeddings");
        v["dimensions"] = json!(e.embedder.dimensions());
        v["context_length"] = json!(e.embedder.max_input_tokens());
        v["weights_sha256"] = catalog::find(name).map_or(Value::Null, |c| json!(c.sha256));
        v
    }));
    json!({
        "object": "system_card",
        "server": {
            "name": "inhaus",
            "version": env!("CARGO_PKG_VERSION"),
            "build": {
                "target": format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
                "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
                "cuda": cfg!(feature = "cuda"),
            },
            "cpu_kernels": inhaus_kernels::cpu::simd_level().name(),
            "models_loaded_at": models.loaded_at,
        },
        "models": list,
        "configuration": state.card_config,
        "data_handling": {
            "egress": "none: no telemetry, no update checks; models are downloaded only by `inhaus fetch` or a serve of a model not yet present",
            "output_marking": "every generation response carries the AI-Disclosure header and a provenance object (signed when configured)",
            "stored_content": if state.responses.is_some() {
                "Responses API responses and their input, in this process's memory only, bounded by size and age, visible only to the creating API key"
            } else {
                "none"
            },
            "audit_trail": match &state.audit {
                Some(a) if a.keeps_content() => "one hash-chained record per request, with the request and output encrypted per subject (erasable)",
                Some(_) => "one hash-chained record per request, without prompt or output text",
                None => "off",
            },
            "signing_key_id": state.signer.as_ref().map(|s| s.key_id.clone()),
            "signing_public_key": state.signer.as_ref().map(|s| s.public_base64()),
        },
    })
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "—".to_string(),
        Value::String(s) => s.replace('|', "\\|"),
        other => other.to_string(),
    }
}

/// The card as Markdown.
pub fn markdown(card: &Value) -> String {
    let mut out = String::from("# System card\n\n");
    let s = &card["server"];
    out.push_str(&format!(
        "Server: inhaus {} ({}, CPU kernels {}).\n\n## Models\n\n",
        cell(&s["version"]),
        cell(&s["build"]["target"]),
        cell(&s["cpu_kernels"])
    ));
    out.push_str("| name | task | source | license | quantization | context | weights sha256 |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for m in card["models"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            cell(&m["name"]),
            cell(&m["task"]),
            cell(&m["source"]),
            cell(&m["license"]),
            cell(&m["quantization"]),
            cell(&m["context_length"]),
            cell(&m["weights_sha256"])
        ));
    }
    out.push_str("\n## Configuration\n\n");
    for (k, v) in card["configuration"].as_object().into_iter().flatten() {
        out.push_str(&format!("- {k}: {}\n", cell(v)));
    }
    out.push_str("\n## Data handling\n\n");
    for (k, v) in card["data_handling"].as_object().into_iter().flatten() {
        out.push_str(&format!("- {k}: {}\n", cell(v)));
    }
    out
}
