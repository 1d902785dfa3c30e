//! The OpenAI-compatible HTTP API. `serve` binds first (so `/health` answers while models load),
//! loads the models and starts one engine thread per generative model, then serves until
//! SIGINT/SIGTERM, when it stops accepting, lets in-flight requests finish up to a grace period, and
//! exits. Every client mistake is an OpenAI error object with the right status, never a panic or a
//! framework's plain-text reply.
pub mod audit_trail;
pub mod auth;
pub mod body;
pub mod card;
pub mod chat;
pub mod completions;
pub mod constraints;
pub mod embeddings;
pub mod errors;
pub mod generation;
pub mod key_limits;
pub mod key_usage;
pub mod listen;
pub mod marking;
pub mod messages;
pub mod observe;
pub mod origin;
pub mod params;
pub mod prepare;
pub mod pump;
pub mod reply;
pub mod responses;
pub mod routes;
pub mod tls;
pub mod tokenize;
pub mod tool_choice;
pub mod tools;

use crate::embeddings::Embedder;
use crate::engine::handle::EngineHandle;
use crate::engine::metrics::EngineMetricFamilies;
use crate::engine::scheduler::EngineConfig;
use crate::grammar::{GrammarCompiler, VocabEnv};
use crate::loader::{self, LoadedModel};
use anyhow::Context;
use embeddings::ServedEmbedder;
use errors::ApiError;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// One served generative model: its weights, tokenizer and template, and its engine thread.
pub struct ServedModel {
    pub loaded: Arc<LoadedModel>,
    pub engine: EngineHandle,
    /// Compiles (and caches) the grammars of constrained requests over this model's vocabulary.
    pub grammars: GrammarCompiler,
    /// The engine's limits (what a request can never exceed).
    pub limits: EngineConfig,
}

impl ServedModel {
    /// The longest sequence (prompt + completion) one request can have: the model's context, or
    /// less when the KV cache holds fewer tokens.
    pub fn max_sequence_len(&self) -> usize {
        let ctx = self.loaded.model.context_len();
        match self.limits.num_blocks * self.limits.block_size {
            0 => ctx,
            pool => ctx.min(pool),
        }
    }
}

/// Everything loaded, by the name clients use in `model`.
#[derive(Default)]
pub struct Models {
    pub generative: BTreeMap<String, ServedModel>,
    pub embedders: BTreeMap<String, ServedEmbedder>,
    /// Unix time the models were loaded (the `created` of /v1/models).
    pub loaded_at: u64,
}

pub struct AppState {
    models: OnceLock<Models>,
    pub registry: Registry,
    engine_metrics: EngineMetricFamilies,
    pub http_requests: observe::HttpRequests,
    pub api_keys: Vec<String>,
    pub request_timeout: Option<Duration>,
    pub max_body_bytes: usize,
    /// Requests being prepared at once (template, tokenizer, grammar) at most: see `prepare`.
    pub prepare_slots: tokio::sync::Semaphore,
    /// Stored Responses API responses (`None`: `--responses-store off`).
    pub responses: Option<responses::store::ResponseStore>,
    /// Signs the provenance of generated output (`--signing-key`).
    pub signer: Option<Arc<crate::provenance::ProvenanceSigner>>,
    /// The configuration part of the system card (no secrets).
    pub card_config: serde_json::Value,
    /// The audit trail (`--audit-log`).
    pub audit: Option<Arc<crate::audit::writer::AuditLog>>,
    /// Named keys with rights and limits (`--key-store`).
    pub keys: Option<key_limits::ServedKeys>,
}

impl AppState {
    pub fn new(
        api_keys: Vec<String>,
        request_timeout: Option<Duration>,
        max_body_bytes: usize,
        prepare_workers: usize,
        responses_store: Option<responses::store::StoreLimits>,
    ) -> Self {
        let mut registry = Registry::default();
        let engine_metrics = EngineMetricFamilies::register(&mut registry);
        let http_requests = observe::HttpRequests::default();
        registry.register(
            "inhaus:http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        Self {
            models: OnceLock::new(),
            registry,
            engine_metrics,
            http_requests,
            api_keys,
            request_timeout,
            max_body_bytes,
            prepare_slots: tokio::sync::Semaphore::new(prepare_workers.max(1)),
            responses: responses_store.map(responses::store::ResponseStore::new),
            signer: None,
            card_config: serde_json::Value::Null,
            audit: None,
            keys: None,
        }
    }

    /// Also exports the engine gauges under vLLM's names (`--metrics-compat vllm`).
    pub fn register_vllm_metrics(&mut self) {
        self.engine_metrics.register_vllm_names(&mut self.registry);
    }

    /// The loaded models; 503 while they load.
    pub fn models(&self) -> Result<&Models, ApiError> {
        self.models.get().ok_or_else(ApiError::loading)
    }

    pub fn is_ready(&self) -> bool {
        self.models.get().is_some()
    }

    pub fn generative(&self, name: &str) -> Result<&ServedModel, ApiError> {
        let m = self.models()?;
        if let Some(s) = m.generative.get(name) {
            return Ok(s);
        }
        if m.embedders.contains_key(name) {
            return Err(ApiError::invalid(
                format!("The model `{name}` is an embedding model; use /v1/embeddings."),
                Some("model"),
            ));
        }
        Err(ApiError::model_not_found(name))
    }

    /// The named generative model, or the first one when no name is given.
    pub fn generative_or_default(&self, name: Option<&str>) -> Result<&ServedModel, ApiError> {
        match name {
            Some(n) => self.generative(n),
            None => {
                self.models()?.generative.values().next().ok_or_else(|| {
                    ApiError::invalid("No generative model is served.", Some("model"))
                })
            }
        }
    }

    pub fn embedder(&self, name: &str) -> Result<&ServedEmbedder, ApiError> {
        let m = self.models()?;
        if let Some(e) = m.embedders.get(name) {
            return Ok(e);
        }
        if m.generative.contains_key(name) {
            return Err(ApiError::invalid(
                format!("The model `{name}` does not serve embeddings; use an embedding model such as all-minilm-l6-v2."),
                Some("model"),
            ));
        }
        Err(ApiError::model_not_found(name))
    }
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// `NAME=PATH`, a catalog alias, or a path (.gguf file; folder for embedding models).
    pub models: Vec<String>,
    /// Scheduling limits; `num_blocks` is derived per model from `kv_cache_bytes`.
    pub engine: EngineConfig,
    /// KV cache memory per model; `None`: a quarter of the memory available at start.
    pub kv_cache_bytes: Option<usize>,
    /// dtype and device of Hugging Face checkpoints.
    pub load: loader::LoadOptions,
    pub api_keys: Vec<String>,
    pub request_timeout: Option<Duration>,
    pub max_body_bytes: usize,
    pub shutdown_timeout: Duration,
    /// Header-read timeout and the most connections open at once.
    pub conn_limits: listen::ConnLimits,
    /// Requests prepared (template, tokenizer, grammar) at once at most, off the async workers.
    pub prepare_workers: usize,
    /// Limits of the Responses API's store; `None` keeps no responses.
    pub responses_store: Option<responses::store::StoreLimits>,
    /// An Ed25519 key file (`inhaus keys signing-key new`) that signs the provenance of output.
    pub signing_key: Option<std::path::PathBuf>,
    /// Export the engine gauges under vLLM's names as well.
    pub vllm_metrics: bool,
    /// Serve HTTPS with these PEM files.
    pub tls: Option<tls::TlsFiles>,
    /// Browser origins allowed to call the API (CORS); empty: none.
    pub cors_origins: Vec<String>,
    /// Write the audit trail here.
    pub audit: Option<crate::audit::writer::AuditOptions>,
    /// The key store (`inhaus keys create --store FILE`).
    pub key_store: Option<std::path::PathBuf>,
}

/// Memory available to new allocations, from /proc/meminfo (Linux); `None` elsewhere.
fn available_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The default KV budget per model: a quarter of the available memory shared by the models, at least
/// 256 MiB, at most 16 GiB.
pub fn default_kv_cache_bytes(num_models: usize) -> usize {
    let avail = available_memory().unwrap_or(4 << 30);
    (avail / 4 / num_models.max(1)).clamp(256 << 20, 16 << 30)
}

enum Loaded {
    Generative(Box<LoadedModel>),
    Embedding(Box<Embedder>),
}

/// Loads one `--model` argument: `NAME=PATH` renames; embedding models are catalog entries with
/// task `embeddings`, or folders / safetensors files.
fn load_one(arg: &str, opts: &loader::LoadOptions) -> anyhow::Result<Loaded> {
    let (name, target) = match arg.split_once('=') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => (Some(n.to_string()), p),
        _ => (None, arg),
    };
    let entry = crate::catalog::find(target);
    if let Some(e) = entry {
        // A catalog model that is not here yet is fetched first (a verified one returns at once).
        crate::fetch::ensure(e).with_context(|| format!("fetching model {target}"))?;
    }
    let is_embedding = match entry {
        Some(e) => e.task.as_deref() == Some("embeddings"),
        None => {
            let p = Path::new(target);
            (p.is_dir() && !loader::is_hf_decoder_folder(p))
                || p.extension().is_some_and(|x| x == "safetensors")
        }
    };
    if is_embedding {
        if let (Some(n), Some(_)) = (&name, entry) {
            anyhow::bail!("`{n}={target}`: rename catalog embedding models by path, not alias");
        }
        let e = match (entry, &name) {
            (None, Some(n)) => {
                let p = Path::new(target);
                let dir = if p.is_dir() {
                    p
                } else {
                    p.parent().unwrap_or(p)
                };
                Embedder::from_dir(dir, n)
            }
            _ => Embedder::load(target),
        }
        .with_context(|| format!("loading embedding model {target}"))?;
        return Ok(Loaded::Embedding(Box::new(e)));
    }
    let mut m =
        loader::load_with(target, opts).with_context(|| format!("loading model {target}"))?;
    if let Some(n) = name {
        m.name = n;
    }
    Ok(Loaded::Generative(Box::new(m)))
}

fn load_all(cfg: &ServeConfig, state: &AppState) -> anyhow::Result<Models> {
    let mut models = Models::default();
    let kv_bytes = cfg
        .kv_cache_bytes
        .unwrap_or_else(|| default_kv_cache_bytes(cfg.models.len()));
    for arg in &cfg.models {
        match load_one(arg, &cfg.load)? {
            Loaded::Embedding(e) => {
                let name = e.name().to_string();
                if models.embedders.contains_key(&name) || models.generative.contains_key(&name) {
                    anyhow::bail!("two models are named `{name}`; rename one with NAME=PATH");
                }
                tracing::info!(model = %name, dims = e.dimensions(), "embedding model ready");
                models.embedders.insert(
                    name,
                    ServedEmbedder {
                        embedder: Arc::from(e),
                        gate: tokio::sync::Semaphore::new(1),
                    },
                );
            }
            Loaded::Generative(m) => {
                let name = m.name.clone();
                if models.embedders.contains_key(&name) || models.generative.contains_key(&name) {
                    anyhow::bail!("two models are named `{name}`; rename one with NAME=PATH");
                }
                let loaded: Arc<LoadedModel> = Arc::from(m);
                let m = &loaded.model;
                let mut ecfg = cfg.engine.clone();
                let per_block = m.kv_bytes_per_block(ecfg.block_size);
                // The memory budget, but never more blocks than every sequence at full context needs.
                let cap = (m.context_len() * ecfg.max_num_seqs).div_ceil(ecfg.block_size);
                ecfg.num_blocks = (kv_bytes / per_block).clamp(1, cap.max(1));
                tracing::info!(
                    model = %name,
                    blocks = ecfg.num_blocks,
                    block_size = ecfg.block_size,
                    mib = (ecfg.num_blocks * per_block) >> 20,
                    "KV cache"
                );
                state
                    .engine_metrics
                    .cache_config(&name, ecfg.block_size, ecfg.num_blocks);
                let grammars = GrammarCompiler::new(VocabEnv::new(&loaded.tokenizer, m.vocab()))
                    .context("setting up constrained decoding")?;
                let limits = ecfg.clone();
                let engine = EngineHandle::spawn(
                    loaded.clone(),
                    ecfg,
                    state.engine_metrics.for_model(&name),
                )
                .context("starting the engine thread")?;
                models.generative.insert(
                    name,
                    ServedModel {
                        loaded,
                        engine,
                        grammars,
                        limits,
                    },
                );
            }
        }
    }
    Ok(models)
}

/// The server's shared state for `cfg` (before any model is loaded).
fn build_state(cfg: &ServeConfig) -> anyhow::Result<AppState> {
    let mut state = AppState::new(
        cfg.api_keys.clone(),
        cfg.request_timeout,
        cfg.max_body_bytes,
        cfg.prepare_workers,
        cfg.responses_store.clone(),
    );
    if let Some(path) = &cfg.signing_key {
        let signer = crate::provenance::ProvenanceSigner::load(path)?;
        tracing::info!(key_id = %signer.key_id, public_key = %signer.public_base64(), "signing the provenance of generated output");
        state.signer = Some(Arc::new(signer));
    }
    if cfg.vllm_metrics {
        state.register_vllm_metrics();
    }
    state.card_config = card::configuration(cfg);
    if let Some(path) = &cfg.key_store {
        let tokens = key_usage::KeyTokens::default();
        state.registry.register(
            "inhaus:key_tokens",
            "Tokens used per key of the key store, by kind (prompt, completion)",
            tokens.clone(),
        );
        state.keys = Some(key_limits::ServedKeys::open(path.clone(), tokens)?);
    }
    if let Some(opts) = &cfg.audit {
        state.audit = Some(Arc::new(crate::audit::writer::AuditLog::open(
            opts.clone(),
        )?));
    }
    Ok(state)
}

/// The system card of the server `cfg` describes (models loaded as `serve` would), as Markdown
/// or JSON: `inhaus card`.
pub fn system_card(cfg: &ServeConfig, markdown: bool) -> anyhow::Result<String> {
    let state = build_state(cfg)?;
    let mut models = load_all(cfg, &state)?;
    models.loaded_at = generation::now();
    let c = card::card(&state, &models);
    Ok(if markdown {
        card::markdown(&c)
    } else {
        serde_json::to_string_pretty(&c)?
    })
}

/// Binds, loads the models, serves until SIGINT/SIGTERM (then drains up to the grace period).
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let state = Arc::new(build_state(&cfg)?);
    let tls = cfg
        .tls
        .clone()
        .map(tls::Tls::new)
        .transpose()?
        .map(Arc::new);
    let app = routes::router(state.clone(), cfg.max_body_bytes, &cfg.cors_origins)?;
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "bound; loading models");
    if cfg.api_keys.is_empty() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving beyond this machine without API keys: anyone who reaches the port can use the models (set --api-key or INHAUS_API_KEYS)");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let server = tokio::spawn(listen::serve(
        listener,
        app,
        cfg.conn_limits,
        tls,
        stop_rx.clone(),
    ));
    // Load on a blocking thread while /health already answers.
    let loader_state = state.clone();
    let load_cfg = cfg.clone();
    let loading = tokio::task::spawn_blocking(move || load_all(&load_cfg, &loader_state));
    // SIGTERM while fetching or loading exits at once (the loader thread is left behind).
    let mut load_stop = stop_rx.clone();
    let mut models = tokio::select! {
        loaded = loading => loaded.context("the model loader failed")??,
        _ = load_stop.wait_for(|stop| *stop) => {
            eprintln!("inhaus: stopped while loading models");
            return Ok(());
        }
    };
    models.loaded_at = generation::now();
    if state.models.set(models).is_err() {
        anyhow::bail!("models were loaded twice");
    }
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    eprintln!("inhaus: listening on {scheme}://{addr}");
    let mut grace_rx = stop_rx.clone();
    let grace = cfg.shutdown_timeout;
    tokio::select! {
        r = server => { r.context("the server task failed")?; }
        _ = async move {
            let _ = grace_rx.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        } => {
            eprintln!("inhaus: requests still running after {} s; exiting", grace.as_secs());
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("inhaus: shutting down (no new connections; finishing running requests)");
}
