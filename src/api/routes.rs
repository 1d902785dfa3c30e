//! Routes and OpenAI wire formats: request parsing and validation, streaming of engine events as SSE
//! chunks (with stop strings matched on the detokenized text and never emitted), and responses.
use super::errors::ApiError;
use super::{AppState, ServedModel};
use crate::chat_template::ChatMessage;
use crate::engine::generate::FinishReason;
use crate::engine::handle::SubmitError;
use crate::engine::sampler::SamplingParams;
use crate::engine::scheduler::{AdmissionError, GenerationRequest, SeqEvent};
use crate::tokenizer::IncrementalDecoder;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

type Shared = Arc<AppState>;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/models", get(list_models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(|| async { ApiError::not_found() })
        .with_state(state)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{prefix}-{:x}{:06x}",
        now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn list_models(State(state): State<Shared>) -> Json<Value> {
    let data: Vec<Value> = state
        .models
        .keys()
        .map(|id| json!({ "id": id, "object": "model", "created": 0, "owned_by": "inhaus" }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StopSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The sampling and length fields shared by both endpoints (unknown fields are ignored).
#[derive(Deserialize)]
struct CommonParams {
    model: Option<String>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    seed: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    stop: Option<StopSpec>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    ignore_eos: bool,
    min_tokens: Option<i64>,
    n: Option<i64>,
}

#[derive(Deserialize)]
struct CompletionBody {
    prompt: Value,
    #[serde(flatten)]
    common: CommonParams,
}

#[derive(Deserialize)]
struct ChatBody {
    messages: Vec<Value>,
    #[serde(flatten)]
    common: CommonParams,
}

/// A validated generation: what the engine gets and what the response needs.
struct Plan {
    model: String,
    prompt: Vec<u32>,
    request: GenerationRequest,
    stops: Vec<String>,
    stream: bool,
    include_usage: bool,
}

fn json_error(rej: JsonRejection) -> ApiError {
    ApiError::invalid(format!("Invalid request body: {}", rej.body_text()), None)
}

fn pick_model<'a>(
    state: &'a AppState,
    name: Option<&str>,
) -> Result<(&'a String, &'a ServedModel), ApiError> {
    match name {
        Some(n) => state
            .models
            .get_key_value(n)
            .ok_or_else(|| ApiError::model_not_found(n)),
        None => state
            .models
            .iter()
            .next()
            .ok_or_else(|| ApiError::internal("no model is loaded")),
    }
}

fn plan(
    state: &AppState,
    c: CommonParams,
    prompt_of: impl FnOnce(&ServedModel) -> Result<Vec<u32>, ApiError>,
) -> Result<Plan, ApiError> {
    let (name, served) = pick_model(state, c.model.as_deref())?;
    let prompt = prompt_of(served)?;
    if prompt.is_empty() {
        return Err(ApiError::invalid("The prompt is empty.", Some("prompt")));
    }
    let ctx = served.loaded.model.config.context_len;
    let max_tokens = match c.max_completion_tokens.or(c.max_tokens) {
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(
                "max_tokens must be at least 1.",
                Some("max_tokens"),
            ))
        }
        Some(m) => m as usize,
        None => ctx.saturating_sub(prompt.len()).clamp(1, 4096),
    };
    if let Some(t) = c.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid(
                "temperature must be between 0 and 2.",
                Some("temperature"),
            ));
        }
    }
    if let Some(p) = c.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid("top_p must be in (0, 1].", Some("top_p")));
        }
    }
    for (v, name) in [
        (c.presence_penalty, "presence_penalty"),
        (c.frequency_penalty, "frequency_penalty"),
    ] {
        if let Some(v) = v {
            if !(-2.0..=2.0).contains(&v) {
                return Err(ApiError::invalid(
                    format!("{name} must be between -2 and 2."),
                    Some("presence_penalty"),
                ));
            }
        }
    }
    if c.n.unwrap_or(1) != 1 {
        return Err(ApiError::invalid("Only n = 1 is supported yet.", Some("n")));
    }
    let stops = match c.stop {
        None => vec![],
        Some(StopSpec::One(s)) => vec![s],
        Some(StopSpec::Many(v)) => v,
    };
    if stops.len() > 4 || stops.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid(
            "stop takes up to 4 non-empty strings.",
            Some("stop"),
        ));
    }
    if prompt.len() + max_tokens > ctx {
        return Err(ApiError::context_too_long(format!(
            "This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({} in the prompt, {max_tokens} for the completion).",
            prompt.len() + max_tokens,
            prompt.len()
        )));
    }
    let sampling = SamplingParams {
        temperature: c.temperature.unwrap_or(1.0),
        top_k: c.top_k.unwrap_or(0).max(0) as usize,
        top_p: c.top_p.unwrap_or(1.0),
        min_p: c.min_p.unwrap_or(0.0),
        seed: c.seed,
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        ..Default::default()
    };
    let request = GenerationRequest {
        prompt: prompt.clone(),
        sampling,
        max_tokens,
        min_tokens: c.min_tokens.unwrap_or(0).max(0) as usize,
        stop_ids: served.loaded.tokenizer.stop_ids.clone(),
        ignore_eos: c.ignore_eos,
        n: 1,
    };
    Ok(Plan {
        model: name.clone(),
        prompt,
        request,
        stops,
        stream: c.stream,
        include_usage: c.stream_options.map(|o| o.include_usage).unwrap_or(false),
    })
}

async fn completions(
    State(state): State<Shared>,
    body: Result<Json<CompletionBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return json_error(e).into_response(),
    };
    let prompt_value = body.prompt;
    let plan = plan(&state, body.common, |served| match &prompt_value {
        Value::String(s) => served
            .loaded
            .tokenizer
            .encode(s, true)
            .map_err(|e| ApiError::invalid(e.to_string(), Some("prompt"))),
        Value::Array(a) if !a.is_empty() && a.iter().all(|v| v.is_u64()) => {
            let vocab = served.loaded.model.config.vocab as u64;
            a.iter()
                .map(|v| match v.as_u64() {
                    Some(t) if t < vocab => Ok(t as u32),
                    _ => Err(ApiError::invalid(
                        "Token ids must be below the vocabulary size.",
                        Some("prompt"),
                    )),
                })
                .collect()
        }
        _ => Err(ApiError::invalid(
            "prompt must be a string or an array of token ids.",
            Some("prompt"),
        )),
    });
    match plan {
        Ok(p) => generate(state, p, Kind::Completion).await,
        Err(e) => e.into_response(),
    }
}

async fn chat_completions(
    State(state): State<Shared>,
    body: Result<Json<ChatBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return json_error(e).into_response(),
    };
    let messages = body.messages;
    let plan = plan(&state, body.common, |served| {
        let mut msgs = Vec::with_capacity(messages.len());
        for m in &messages {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid("Each message needs a role.", Some("messages")))?;
            if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
                return Err(ApiError::invalid(
                    format!("Unknown role `{role}`."),
                    Some("messages"),
                ));
            }
            let content = match m.get("content") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => {
                    let text: Vec<&str> = parts
                        .iter()
                        .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect();
                    Value::String(text.join(""))
                }
                Some(Value::Null) | None => Value::String(String::new()),
                _ => {
                    return Err(ApiError::invalid(
                        "Message content must be a string or content parts.",
                        Some("messages"),
                    ))
                }
            };
            let role = if role == "developer" { "system" } else { role };
            msgs.push(ChatMessage {
                role: role.to_string(),
                content,
            });
        }
        if msgs.is_empty() {
            return Err(ApiError::invalid(
                "messages must not be empty.",
                Some("messages"),
            ));
        }
        let template = served.loaded.chat_template.as_ref().ok_or_else(|| {
            ApiError::invalid(
                "This model has no chat template; use /v1/completions.",
                Some("model"),
            )
        })?;
        let text = template
            .render(&msgs, true)
            .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
        let tok = &served.loaded.tokenizer;
        let mut ids = tok
            .encode(&text, false)
            .map_err(|e| ApiError::invalid(e.to_string(), Some("messages")))?;
        if let (true, Some(bos)) = (tok.add_bos, tok.bos_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    });
    match plan {
        Ok(p) => generate(state, p, Kind::Chat).await,
        Err(e) => e.into_response(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

/// A piece of output text, or the end of the sequence.
enum Piece {
    Text(String),
    End {
        reason: &'static str,
        completion_tokens: usize,
    },
    Failed(String),
}

fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
        FinishReason::Error => "error",
    }
}

/// Reads the engine's events on a blocking thread, detokenizes, applies stop strings (holding back
/// text that could be the start of one), and forwards pieces. Dropping `out` (the client left) drops
/// the engine receiver, which cancels the sequence at its next token.
fn pump(
    served_tok: Arc<crate::loader::LoadedModel>,
    stream: crate::engine::handle::RequestStream,
    stops: Vec<String>,
    out: tokio::sync::mpsc::Sender<Piece>,
) {
    let tok = &served_tok.tokenizer;
    let mut dec = IncrementalDecoder::new(true);
    let hold = stops
        .iter()
        .map(|s| s.len())
        .max()
        .unwrap_or(0)
        .saturating_sub(1);
    let mut pending = String::new();
    let mut n = 0usize;
    let emit = |s: String| out.blocking_send(Piece::Text(s)).is_ok();
    for ev in stream.events.iter() {
        match ev {
            SeqEvent::Token { id, .. } => {
                n += 1;
                if tok.stop_ids.contains(&id) {
                    continue;
                }
                match dec.push(tok, id) {
                    Ok(t) => pending.push_str(&t),
                    Err(e) => {
                        let _ = out.blocking_send(Piece::Failed(e.to_string()));
                        return;
                    }
                }
                if let Some(pos) = stops.iter().filter_map(|s| pending.find(s.as_str())).min() {
                    pending.truncate(pos);
                    if !pending.is_empty() {
                        emit(std::mem::take(&mut pending));
                    }
                    let _ = out.blocking_send(Piece::End {
                        reason: "stop",
                        completion_tokens: n,
                    });
                    return; // dropping `events` cancels the sequence
                }
                let mut cut = pending.len().saturating_sub(hold);
                while !pending.is_char_boundary(cut) {
                    cut -= 1;
                }
                if cut > 0 {
                    let rest = pending.split_off(cut);
                    if !emit(std::mem::replace(&mut pending, rest)) {
                        return;
                    }
                }
            }
            SeqEvent::Finished { reason: r, .. } => {
                if let Ok(t) = dec.finish(tok) {
                    pending.push_str(&t);
                }
                if !pending.is_empty() {
                    emit(std::mem::take(&mut pending));
                }
                let piece = match r {
                    FinishReason::Error => {
                        Piece::Failed("the engine failed while generating".into())
                    }
                    r => Piece::End {
                        reason: finish_name(r),
                        completion_tokens: n,
                    },
                };
                let _ = out.blocking_send(piece);
                return;
            }
        }
    }
}

async fn generate(state: Shared, plan: Plan, kind: Kind) -> Response {
    let Some(served) = state.models.get(&plan.model) else {
        return ApiError::model_not_found(&plan.model).into_response();
    };
    // Submitting waits for the engine thread to take the request (up to one step): off the async workers.
    let submitted = {
        let state = state.clone();
        let name = plan.model.clone();
        let request = plan.request;
        tokio::task::spawn_blocking(move || match state.models.get(&name) {
            Some(m) => m.engine.submit(request),
            None => Err(SubmitError::Stopped),
        })
        .await
    };
    let events = match submitted.unwrap_or(Err(SubmitError::Stopped)) {
        Ok(stream) => stream,
        Err(SubmitError::Refused(AdmissionError::QueueFull)) => {
            return ApiError::overloaded().into_response()
        }
        Err(SubmitError::Refused(e @ AdmissionError::TooLong { .. })) => {
            return ApiError::context_too_long(e.to_string()).into_response()
        }
        Err(SubmitError::Refused(e)) => {
            return ApiError::invalid(e.to_string(), Some("prompt")).into_response()
        }
        Err(SubmitError::Stopped) => {
            return ApiError::internal("the engine has stopped").into_response()
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(64);
    let loaded = served.loaded.clone();
    let stops = plan.stops.clone();
    tokio::task::spawn_blocking(move || pump(loaded, events, stops, tx));
    let id = new_id(if kind == Kind::Chat {
        "chatcmpl"
    } else {
        "cmpl"
    });
    let created = now();
    let model = plan.model.clone();
    let prompt_tokens = plan.prompt.len();
    if !plan.stream {
        let mut text = String::new();
        while let Some(p) = rx.recv().await {
            match p {
                Piece::Text(t) => text.push_str(&t),
                Piece::Failed(m) => return ApiError::internal(m).into_response(),
                Piece::End {
                    reason,
                    completion_tokens,
                } => {
                    let usage = json!({ "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens });
                    let body = match kind {
                        Kind::Chat => json!({
                            "id": id, "object": "chat.completion", "created": created, "model": model,
                            "choices": [{ "index": 0, "message": { "role": "assistant", "content": text, "refusal": null }, "logprobs": null, "finish_reason": reason }],
                            "usage": usage,
                        }),
                        Kind::Completion => json!({
                            "id": id, "object": "text_completion", "created": created, "model": model,
                            "choices": [{ "index": 0, "text": text, "logprobs": null, "finish_reason": reason }],
                            "usage": usage,
                        }),
                    };
                    return Json(body).into_response();
                }
            }
        }
        return ApiError::internal("the generation ended without a result").into_response();
    }
    let include_usage = plan.include_usage;
    let chunk = move |delta: Option<&str>, finish: Option<&str>, first: bool| -> Value {
        match kind {
            Kind::Chat => {
                let d = match (first, delta) {
                    (true, _) => json!({ "role": "assistant", "content": "" }),
                    (false, Some(t)) => json!({ "content": t }),
                    (false, None) => json!({}),
                };
                json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{ "index": 0, "delta": d, "logprobs": null, "finish_reason": finish }] })
            }
            Kind::Completion => {
                json!({ "id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{ "index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish }] })
            }
        }
    };
    let (sse_tx, sse_rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        let send = |v: Value| {
            let tx = sse_tx.clone();
            async move {
                tx.send(Ok(Event::default().data(v.to_string())))
                    .await
                    .is_ok()
            }
        };
        if kind == Kind::Chat && !send(chunk(None, None, true)).await {
            return;
        }
        while let Some(p) = rx.recv().await {
            match p {
                Piece::Text(t) => {
                    if !send(chunk(Some(&t), None, false)).await {
                        return;
                    }
                }
                Piece::Failed(m) => {
                    let _ = send(ApiError::internal(m).body()).await;
                    break;
                }
                Piece::End {
                    reason,
                    completion_tokens,
                } => {
                    let mut last = chunk(None, Some(reason), false);
                    if kind == Kind::Completion {
                        last["choices"][0]["text"] = json!("");
                    }
                    if !send(last.clone()).await {
                        return;
                    }
                    if include_usage {
                        let mut u = last;
                        u["choices"] = json!([]);
                        u["usage"] = json!({ "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens });
                        if !send(u).await {
                            return;
                        }
                    }
                    break;
                }
            }
        }
        let _ = sse_tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(sse_rx).map(|e| e))
        .keep_alive(KeepAlive::default())
        .into_response()
}
