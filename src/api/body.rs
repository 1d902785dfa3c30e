//! Request bodies are read within the request's time limit: a client that sends its headers and then
//! trickles (or never sends) the body gets 408 once `--request-timeout-secs` has passed, instead of
//! holding its connection and a handler for as long as it likes. The body is read whole here, past the
//! size limit a 413, and handed on as bytes (the handlers parse it whole anyway).
use super::errors::ApiError;
use super::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::sync::Arc;

/// When the request arrived: its deadline (`--request-timeout-secs`) counts from here, through
/// reading the body, preparing the prompt and generating.
#[derive(Clone, Copy, Debug)]
pub struct RequestArrival(pub std::time::Instant);

pub async fn read_within_timeout(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let limit = state.max_body_bytes;
    let (mut parts, body) = req.into_parts();
    parts
        .extensions
        .insert(RequestArrival(std::time::Instant::now()));
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::payload_too_large(limit).into_response();
    }
    let read = Limited::new(body, limit).collect();
    let read = match state.request_timeout {
        Some(t) => match tokio::time::timeout(t, read).await {
            Ok(r) => r,
            Err(_) => return ApiError::timeout(t.as_secs()).into_response(),
        },
        None => read.await,
    };
    let bytes = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return ApiError::payload_too_large(limit).into_response()
        }
        Err(e) => {
            return ApiError::invalid(format!("Failed to read the request body: {e}"), None)
                .into_response()
        }
    };
    // The body as JSON, once, for what needs it here: a store key limited to some models, and an
    // audit record that keeps the request.
    let restricted = parts
        .extensions
        .get::<super::key_limits::KeyIdentity>()
        .filter(|k| k.0.limits.models.is_some())
        .cloned();
    let audit = parts
        .extensions
        .get::<super::audit_trail::AuditHandle>()
        .filter(|a| a.keeps_content())
        .cloned();
    if restricted.is_some() || audit.is_some() {
        let parsed = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
        if let Some(k) = &restricted {
            let model = parsed
                .as_ref()
                .and_then(|v| v.get("model"))
                .and_then(|m| m.as_str());
            if let Some(m) = model.filter(|m| !k.may_use(m)) {
                return ApiError {
                    status: axum::http::StatusCode::FORBIDDEN,
                    message: format!("The key `{}` may not use the model `{m}`.", k.0.name),
                    kind: "invalid_request_error",
                    param: Some("model"),
                    code: Some("model_not_allowed"),
                }
                .into_response();
            }
        }
        if let Some(a) = audit {
            let body = parsed.unwrap_or_else(|| serde_json::json!(String::from_utf8_lossy(&bytes)));
            a.set("request", body);
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
