//! `POST /tokenize` and `POST /detokenize` with vLLM's request and response shapes: a prompt or chat
//! messages to token ids (so clients can count tokens exactly as generation will), and back.
use super::completions::ApiJson;
use super::errors::ApiError;
use super::params;
use super::prepare;
use super::AppState;
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
    /// Tool definitions the chat template renders (as in a chat completion request).
    tools: Option<Value>,
    return_token_strs: Option<bool>,
}

#[derive(Deserialize)]
pub struct DetokenizeBody {
    model: Option<String>,
    tokens: Vec<Value>,
}

pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<TokenizeBody>,
) -> Result<Response, ApiError> {
    let name = match body.model.clone() {
        Some(n) => {
            state.generative(&n)?;
            n
        }
        None => state
            .models()?
            .generative
            .keys()
            .next()
            .cloned()
            .ok_or_else(|| ApiError::invalid("No generative model is served.", Some("model")))?,
    };
    // Tokenizing a long text is CPU work: on the preparation pool, after a length check.
    let out = prepare::run(&state, &name, move |served| {
        let tok = &served.loaded.tokenizer;
        let ids = match (&body.prompt, &body.messages) {
            (Some(p), None) => {
                prepare::check_prompt_bytes(served, p.len())?;
                tok.encode(p, body.add_special_tokens.unwrap_or(true))
                    .map_err(|e| ApiError::invalid(e.to_string(), Some("prompt")))
            }
            (None, Some(m)) => params::chat_prompt(
                served,
                m,
                body.add_generation_prompt.unwrap_or(true),
                body.tools.as_ref(),
            ),
            _ => Err(ApiError::invalid(
                "Give either `prompt` or `messages`.",
                Some("prompt"),
            )),
        };
        let ids = ids?;
        let strs = body.return_token_strs.unwrap_or(false).then(|| {
            ids.iter()
                .map(|&i| String::from_utf8_lossy(&tok.token_bytes(i)).into_owned())
                .collect::<Vec<_>>()
        });
        Ok(json!({
            "count": ids.len(),
            "max_model_len": served.loaded.model.context_len(),
            "tokens": ids,
            "token_strs": strs,
        }))
    })
    .await?;
    Ok(Json(out).into_response())
}

pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<DetokenizeBody>,
) -> Result<Response, ApiError> {
    let served = state.generative_or_default(body.model.as_deref())?;
    let ids = params::token_prompt(served, &body.tokens, "tokens")?;
    let text = served
        .loaded
        .tokenizer
        .decode(&ids, false)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("tokens")))?;
    Ok(Json(json!({ "prompt": text })).into_response())
}
