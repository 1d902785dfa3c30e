//! The router: which path goes to which handler, which routes need an API key, the body limit and
//! body-read timeout, the request log and counter, and the small endpoints (models, health, readiness).
use super::errors::ApiError;
use super::{
    auth, body, card, completions, embeddings, messages, observe, responses, tokenize, AppState,
};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;

type Shared = Arc<AppState>;

/// Browser origins allowed to call the API: preflights answered, CORS headers on the answers.
fn cors(origins: &[String]) -> anyhow::Result<tower_http::cors::CorsLayer> {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let list = origins
        .iter()
        .map(|o| {
            HeaderValue::from_str(o.trim_end_matches('/'))
                .map_err(|_| anyhow::anyhow!("--cors-origin `{o}` is not a valid origin"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(list))
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("anthropic-version"),
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("ai-disclosure"),
        ])
        .max_age(std::time::Duration::from_secs(600)))
}

pub fn router(
    state: Shared,
    max_body_bytes: usize,
    cors_origins: &[String],
) -> anyhow::Result<Router> {
    let protected = Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(completions::chat_completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::input_items),
        )
        .route("/v1/system/card", get(system_card));
    // Anthropic's API: the same checks, and errors in Anthropic's shape.
    let anthropic = Router::new()
        .route("/v1/messages", post(messages::create))
        .route("/v1/messages/count_tokens", post(messages::count_tokens));
    let protected = with_key_and_body(protected, &state);
    let anthropic = with_key_and_body(anthropic, &state)
        .route_layer(middleware::from_fn(messages::errors::anthropic_errors));
    let app = Router::new()
        .merge(protected)
        .merge(anthropic)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(observe::metrics))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::observe_requests,
        ))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state);
    Ok(if cors_origins.is_empty() {
        app
    } else {
        // Outermost: a preflight carries no key and is answered before the key check.
        app.layer(cors(cors_origins)?)
    })
}

/// The API key check, then the body read within the request timeout (inside the key check: no
/// body is read for a caller without a key).
fn with_key_and_body(routes: Router<Shared>, state: &Shared) -> Router<Shared> {
    routes
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            body::read_within_timeout,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
}

#[derive(serde::Deserialize)]
struct CardQuery {
    format: Option<String>,
}

/// The system card: JSON, or Markdown with `?format=markdown`.
async fn system_card(
    State(state): State<Shared>,
    axum::extract::Query(q): axum::extract::Query<CardQuery>,
) -> Result<Response, ApiError> {
    let c = card::card(&state, state.models()?);
    match q.format.as_deref() {
        None | Some("json") => Ok(Json(c).into_response()),
        Some("markdown" | "md") => Ok((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/markdown; charset=utf-8",
            )],
            card::markdown(&c),
        )
            .into_response()),
        Some(other) => Err(ApiError::invalid(
            format!("format must be json or markdown; got `{other}`."),
            Some("format"),
        )),
    }
}

/// A `/v1/models` entry: OpenAI's fields, and where the model came from and how it runs (source,
/// format, dtype, device, backend, context length) as extension fields.
fn model_object(models: &super::Models, id: &str) -> Value {
    let mut v =
        json!({ "id": id, "object": "model", "created": models.loaded_at, "owned_by": "inhaus" });
    if let Some(m) = models.generative.get(id) {
        let s = &m.loaded.source;
        v["source"] = json!({ "kind": s.kind, "location": s.location, "revision": s.revision });
        v["format"] = json!(s.format);
        v["dtype"] = json!(s.dtype);
        v["device"] = json!(s.device);
        v["backend"] = json!(m.loaded.model.backend());
        v["context_length"] = json!(m.loaded.model.context_len());
    } else if let Some(e) = models.embedders.get(id) {
        v["format"] = json!("safetensors");
        v["dtype"] = json!("f32");
        v["device"] = json!("cpu");
        v["context_length"] = json!(e.embedder.max_seq_length());
    }
    v
}

async fn list_models(
    State(state): State<Shared>,
    key: Option<axum::Extension<super::key_limits::KeyIdentity>>,
) -> Result<Response, ApiError> {
    let models = state.models()?;
    let allowed = |id: &&String| key.as_ref().is_none_or(|k| k.0.may_use(id));
    let data: Vec<Value> = models
        .generative
        .keys()
        .chain(models.embedders.keys())
        .filter(allowed)
        .map(|id| model_object(models, id))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })).into_response())
}

async fn get_model(
    State(state): State<Shared>,
    key: Option<axum::Extension<super::key_limits::KeyIdentity>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let models = state.models()?;
    let allowed = key.as_ref().is_none_or(|k| k.0.may_use(&id));
    if allowed && (models.generative.contains_key(&id) || models.embedders.contains_key(&id)) {
        Ok(Json(model_object(models, &id)).into_response())
    } else {
        Err(ApiError::model_not_found(&id))
    }
}

/// The models whose engine thread has stopped.
fn stopped_engines(models: &super::Models) -> Vec<&String> {
    models
        .generative
        .iter()
        .filter(|(_, m)| !m.engine.is_alive())
        .map(|(name, _)| name)
        .collect()
}

/// 200 with `{"status": ok}` while no engine has stopped, else 503 naming the stopped ones.
fn engine_status(ok: &str, stopped: Vec<&String>) -> Response {
    if stopped.is_empty() {
        Json(json!({ "status": ok })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "engine stopped", "models": stopped })),
        )
            .into_response()
    }
}

/// Liveness: 200 while the process serves (also while models load); 503 once an engine thread has
/// stopped, so that an orchestrator restarts the instance.
async fn health(State(state): State<Shared>) -> Response {
    let stopped = state.models().map(stopped_engines).unwrap_or_default();
    engine_status("ok", stopped)
}

/// 200 when every model is loaded and every engine thread runs; 503 while loading, or with the
/// models whose engine has stopped (so a load balancer takes the instance out).
async fn ready(State(state): State<Shared>) -> Response {
    let Ok(models) = state.models() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "loading" })),
        )
            .into_response();
    };
    engine_status("ready", stopped_engines(models))
}
