//! `POST /v1/embeddings`: a string, a list of strings, a token array or a list of token arrays,
//! embedded in batches (one request at a time per model, so concurrent requests queue fairly rather
//! than fight over the cores), returned as floats or base64 little-endian f32 as the OpenAI SDKs
//! expect.
use super::completions::ApiJson;
use super::errors::ApiError;
use super::origin::Origin;
use super::prepare;
use super::AppState;
use crate::embeddings::Embedder;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// The most inputs one request may carry (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

#[derive(Deserialize)]
pub struct EmbeddingBody {
    input: Value,
    model: String,
    encoding_format: Option<String>,
    dimensions: Option<i64>,
}

/// A model served for embeddings, with the gate that lets one request at a time compute.
pub struct ServedEmbedder {
    pub embedder: Arc<Embedder>,
    pub gate: tokio::sync::Semaphore,
}

fn inputs(e: &Embedder, input: &Value) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "input must be a non-empty string, a list of strings, a list of token ids, or a list of lists of token ids.",
            Some("input"),
        )
    };
    let text = |s: &str| {
        if s.is_empty() {
            return Err(ApiError::invalid(
                "input must not be an empty string.",
                Some("input"),
            ));
        }
        e.tokenize(s)
            .map_err(|err| ApiError::invalid(err.to_string(), Some("input")))
    };
    let ids = |v: &[Value]| -> Result<Vec<u32>, ApiError> {
        v.iter()
            .map(|t| {
                t.as_u64()
                    .filter(|&t| t <= u32::MAX as u64)
                    .map(|t| t as u32)
                    .ok_or_else(bad)
            })
            .collect()
    };
    let out = match input {
        Value::String(s) => vec![text(s)?],
        Value::Array(items) if items.is_empty() => return Err(bad()),
        Value::Array(items) if items.iter().all(Value::is_number) => vec![ids(items)?],
        Value::Array(items) => items
            .iter()
            .map(|it| match it {
                Value::String(s) => text(s),
                Value::Array(v) if !v.is_empty() => ids(v),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(bad()),
    };
    if out.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            format!(
                "At most {MAX_INPUTS} inputs per request; got {}.",
                out.len()
            ),
            Some("input"),
        ));
    }
    Ok(out)
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    origin: Origin,
    ApiJson(body): ApiJson<EmbeddingBody>,
) -> Result<Response, ApiError> {
    let served = state.embedder(&body.model)?;
    let e = served.embedder.clone();
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("encoding_format must be `float` or `base64`; got `{other}`."),
                Some("encoding_format"),
            ))
        }
    };
    if let Some(d) = body.dimensions {
        if d != e.dimensions() as i64 {
            return Err(ApiError::invalid(
                format!(
                    "This model gives {} dimensions; it cannot shorten them to {d}.",
                    e.dimensions()
                ),
                Some("dimensions"),
            ));
        }
    }
    // Tokenizing the inputs is CPU work: on the preparation pool.
    let tokenizer = e.clone();
    let input = body.input;
    let (ids, prompt_tokens) = prepare::run_plain(&state, move || {
        let ids = inputs(&tokenizer, &input)?;
        let n: usize = ids.iter().map(|i| tokenizer.model_input_ids(i).len()).sum();
        Ok((ids, n))
    })
    .await?;
    // The inputs count against the key's tokens once they are to be embedded.
    if let (Some(k), Some(keys)) = (&origin.store_key, &state.keys) {
        keys.meter(k).prompt(prompt_tokens);
    }
    let _permit = served
        .gate
        .acquire()
        .await
        .map_err(|_| ApiError::internal("the embedding model was unloaded"))?;
    let worker = e.clone();
    let vectors = match tokio::task::spawn_blocking(move || worker.embed_tokens(&ids)).await {
        Ok(Ok(v)) => v,
        Ok(Err(err)) if err.is_invalid_input() => {
            return Err(ApiError::invalid(err.to_string(), Some("input")))
        }
        Ok(Err(err)) => return Err(ApiError::internal(err.to_string())),
        Err(_) => return Err(ApiError::internal("the embedding worker failed")),
    };
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": { "prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens },
    }))
    .into_response())
}
