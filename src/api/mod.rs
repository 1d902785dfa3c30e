//! The OpenAI-compatible HTTP API (first subset): `/health`, `/v1/models`, `/v1/completions` and
//! `/v1/chat/completions`, streaming (SSE) and not, over the engine threads. Every client mistake is an
//! OpenAI error object with the right status, never a panic or a framework's plain-text reply.
pub mod errors;
pub mod routes;

use crate::engine::handle::EngineHandle;
use crate::engine::scheduler::EngineConfig;
use crate::loader::{self, LoadedModel};
use anyhow::Context;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One served model: its weights, tokenizer and template, and its engine thread.
pub struct ServedModel {
    pub loaded: Arc<LoadedModel>,
    pub engine: EngineHandle,
}

pub struct AppState {
    pub models: BTreeMap<String, ServedModel>,
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    pub models: Vec<String>,
    /// Scheduling limits; `num_blocks` is derived per model from `kv_cache_bytes`.
    pub engine: EngineConfig,
    pub kv_cache_bytes: usize,
}

/// Loads the models, starts their engines and serves until SIGINT/SIGTERM.
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let mut models = BTreeMap::new();
    for name in &cfg.models {
        let loaded = Arc::new(loader::load(name).with_context(|| format!("loading model {name}"))?);
        let c = &loaded.model.config;
        let mut ecfg = cfg.engine.clone();
        let per_block = c.kv_shape(ecfg.block_size, 1).bytes_per_block();
        // The memory budget, but never more blocks than the context needs for every sequence at once.
        let cap = (c.context_len * ecfg.max_num_seqs).div_ceil(ecfg.block_size);
        ecfg.num_blocks = (cfg.kv_cache_bytes / per_block).clamp(1, cap.max(1));
        tracing::info!(model = %loaded.name, blocks = ecfg.num_blocks, block_size = ecfg.block_size, "KV cache");
        let engine = EngineHandle::spawn(loaded.clone(), ecfg, Default::default())
            .context("starting the engine thread")?;
        models.insert(loaded.name.clone(), ServedModel { loaded, engine });
    }
    let state = Arc::new(AppState { models });
    let app = routes::router(state);
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .with_context(|| format!("binding {}:{}", cfg.host, cfg.port))?;
    let addr = listener.local_addr()?;
    eprintln!("inhaus: listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
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
    eprintln!("inhaus: shutting down");
}
