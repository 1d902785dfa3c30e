//! `POST /tokenize` and `POST /detokenize` with vLLM's request and response shapes: a prompt or chat
//! messages to token ids (so clients can count tokens exactly as generation will), and back.
use super::completions::json_error;
use super::errors::ApiError;
use super::params;
use super::AppState;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Deserialize)]
pub struct TokenizeBody {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<Value>>,
    add_special_tokens: Option<bool>,
    add_generation_prompt: Option<bool>,
    return_token_strs: Option<bool>,
}

#[derive(Deserialize)]
pub struct DetokenizeBody {
    model: Option<String>,
    tokens: Vec<Value>,
}

pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Json<TokenizeBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return json_error(e, state.max_body_bytes).into_response(),
    };
    let served = match state.generative_or_default(body.model.as_deref()) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let tok = &served.loaded.tokenizer;
    let ids = match (&body.prompt, &body.messages) {
        (Some(p), None) => tok
            .encode(p, body.add_special_tokens.unwrap_or(true))
            .map_err(|e| ApiError::invalid(e.to_string(), Some("prompt"))),
        (None, Some(m)) => {
            params::chat_prompt(served, m, body.add_generation_prompt.unwrap_or(true))
        }
        _ => Err(ApiError::invalid(
            "Give either `prompt` or `messages`.",
            Some("prompt"),
        )),
    };
    let ids = match ids {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let strs = body.return_token_strs.unwrap_or(false).then(|| {
        ids.iter()
            .map(|&i| String::from_utf8_lossy(&tok.token_bytes(i)).into_owned())
            .collect::<Vec<_>>()
    });
    Json(json!({
        "count": ids.len(),
        "max_model_len": served.loaded.model.config.context_len,
        "tokens": ids,
        "token_strs": strs,
    }))
    .into_response()
}

pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Json<DetokenizeBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return json_error(e, state.max_body_bytes).into_response(),
    };
    let served = match state.generative_or_default(body.model.as_deref()) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let ids = match params::token_prompt(served, &body.tokens, "tokens") {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    match served.loaded.tokenizer.decode(&ids, false) {
        Ok(text) => Json(json!({ "prompt": text })).into_response(),
        Err(e) => ApiError::invalid(e.to_string(), Some("tokens")).into_response(),
    }
}
