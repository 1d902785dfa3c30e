//! API keys: with `--api-key` (or `INHAUS_API_KEYS`, or a key file) every protected route needs
//! `Authorization: Bearer <key>` (or `x-api-key: <key>`, as Anthropic's clients send it). Keys are
//! compared in constant time; the key a request used travels with it as `CallerKey` (what is stored
//! for a key is visible to that key only).
use super::errors::ApiError;
use super::AppState;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The API key a request was authorized with.
#[derive(Clone, Debug)]
pub struct CallerKey(pub String);

pub async fn require_key(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    if state.api_keys.is_empty() {
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
        .map(str::trim);
    let ok = given.is_some_and(|g| {
        state
            .api_keys
            .iter()
            .fold(false, |found, k| found | same(k.as_bytes(), g.as_bytes()))
    });
    match given {
        Some(g) if ok => {
            if let Some(a) = req.extensions().get::<super::audit_trail::AuditHandle>() {
                a.set("key", serde_json::json!(super::audit_trail::key_name(g)));
            }
            let key = CallerKey(g.to_string());
            req.extensions_mut().insert(key);
            next.run(req).await
        }
        _ => ApiError::unauthorized().into_response(),
    }
}
