//! API keys: with `--api-key` (or `INHAUS_API_KEYS`, or a key file) every protected route needs
//! `Authorization: Bearer <key>` (or `x-api-key: <key>`, as Anthropic's clients send it). Keys are
//! compared in constant time; the key a request used travels with it as `CallerKey` (what is stored
//! for a key is visible to that key only).
use super::errors::ApiError;
use super::AppState;
use crate::keys::constant_time_eq;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The API key a request was authorized with.
#[derive(Clone, Debug)]
pub struct CallerKey(pub String);

pub async fn require_key(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    if state.api_keys.is_empty() && state.keys.is_none() {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let given = bearer
        .or_else(|| req.headers().get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .map(str::to_string);
    let Some(g) = given else {
        return ApiError::unauthorized().into_response();
    };
    let plain = state.api_keys.iter().fold(false, |found, k| {
        found | constant_time_eq(k.as_bytes(), g.as_bytes())
    });
    // A key of the store: its name in the audit trail, its limits before the request runs.
    let stored = if plain {
        None
    } else {
        match state.keys.as_ref().and_then(|k| k.identify(&g)) {
            Some(entry) => Some(entry),
            None => return ApiError::unauthorized().into_response(),
        }
    };
    let audit_name = match &stored {
        Some(e) => e.name.clone(),
        None => super::audit_trail::key_name(&g),
    };
    if let Some(a) = req.extensions().get::<super::audit_trail::AuditHandle>() {
        a.set("key", serde_json::json!(audit_name));
    }
    req.extensions_mut().insert(CallerKey(g));
    let Some(entry) = stored else {
        return next.run(req).await;
    };
    let guard = match state.keys.as_ref().map(|k| k.admit(&entry)) {
        Some(Ok(g)) => g,
        Some(Err(over)) => return over.into_response(),
        None => return ApiError::unauthorized().into_response(),
    };
    req.extensions_mut()
        .insert(super::key_limits::KeyIdentity(entry));
    let resp = next.run(req).await;
    super::key_limits::hold(resp, guard)
}
