//! `POST /v1/chat/completions` and `POST /v1/completions`: validate, submit one engine request per
//! prompt (each with `n` choices), and answer either as one JSON response or as an SSE stream of
//! chunks (a role chunk per choice, content deltas, exactly one chunk with `finish_reason` per
//! choice, an optional usage chunk, then `[DONE]`), in OpenAI's wire format.
use super::body::RequestArrival;
use super::constraints::{self, OutputGrammar};
use super::errors::ApiError;
use super::params::{self, ChatBody, CompletionBody, GenSpec};
use super::prepare;
use super::pump::{pump, Piece, TokenLogprob};
use super::tool_choice::ToolPlan;
use super::tools::{StreamPiece, ToolCall, ToolCallSplitter, ToolCallStreamer};
use super::{AppState, ServedModel};
use crate::chat_template::ToolCallFormat;
use crate::engine::constraint::{Constraint, ConstraintMode};
use crate::engine::handle::SubmitError;
use crate::engine::scheduler::{AdmissionError, CancelHandle};
use crate::grammar::GrammarSpec;
use axum::extract::{Extension, FromRequest, Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

type Shared = Arc<AppState>;

pub fn now() -> u64 {
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

/// A JSON body whose rejection is an OpenAI error: 413 past the size limit, else 400 (never
/// axum's plain-text 422).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Shared> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Shared) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) if rej.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::payload_too_large(state.max_body_bytes))
            }
            Err(rej) => Err(ApiError::invalid(
                format!("Invalid request body: {}", rej.body_text()),
                None,
            )),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
    /// Chat where the model was shown tools: `<tool_call>` blocks become `tool_calls`.
    ChatWithTools,
}

impl Kind {
    fn is_chat(self) -> bool {
        self != Kind::Completion
    }
}

pub async fn chat_completions(
    State(state): State<Shared>,
    arrival: Option<Extension<RequestArrival>>,
    ApiJson(body): ApiJson<ChatBody>,
) -> Result<Response, ApiError> {
    let arrived = arrival.map_or_else(Instant::now, |a| a.0 .0);
    let served = state.generative(&body.common.model)?;
    let logprobs = match (body.logprobs, body.top_logprobs) {
        (Some(true), k) => match k.unwrap_or(0) {
            k @ 0..=20 => Some(k as usize),
            k => {
                return Err(ApiError::invalid(
                    format!("top_logprobs must be between 0 and 20; got {k}."),
                    Some("top_logprobs"),
                ))
            }
        },
        (_, Some(k)) if k > 0 => {
            return Err(ApiError::invalid(
                "top_logprobs needs logprobs set to true.",
                Some("top_logprobs"),
            ))
        }
        _ => None,
    };
    let mut spec = params::validate(&body.common, served, logprobs)?;
    let tools = body.tool_plan()?;
    let output = body.common.constraints.output_grammar()?;
    let kind = if tools.is_some() {
        Kind::ChatWithTools
    } else {
        Kind::Chat
    };
    let tool_names = tools.as_ref().map(ToolPlan::names).unwrap_or_default();
    let model = body.common.model;
    let messages = body.messages;
    // Rendering, tokenizing and compiling a grammar are CPU work: off the async workers.
    let (prompt, constraint) = prepare::run(&state, &model, move |served| {
        let raw = tools.as_ref().map(|t| &t.raw);
        let prompt = params::chat_prompt(served, &messages, true, raw)?;
        let constraint = chat_constraint(served, tools.as_ref(), output)?;
        Ok((prompt, constraint))
    })
    .await?;
    spec.constraint = constraint;
    run(state, model, spec, vec![prompt], kind, tool_names, arrived).await
}

/// The constraint of a chat reply: forced tool calls; else the requested output format (or, with
/// `auto` tools in the Hermes format, that format or calls); else the rest of any call the model
/// opens by itself.
fn chat_constraint(
    served: &ServedModel,
    tools: Option<&ToolPlan>,
    output: Option<OutputGrammar>,
) -> Result<Option<Constraint>, ApiError> {
    let format = served
        .loaded
        .chat_template
        .as_ref()
        .map_or(ToolCallFormat::BareJson, |t| t.tool_format);
    let tok = &served.loaded.tokenizer;
    let open = tok
        .tokenizer
        .token_to_id("<tool_call>")
        .filter(|&id| !tok.is_control(id));
    let whole = ConstraintMode::Whole;
    let chosen = match (tools, output) {
        (Some(plan), _) if plan.forced() => plan
            .grammar(format, open)
            .map(|(g, mode)| (g, "tools", mode)),
        (Some(plan), Some(out)) => {
            let answer = match &out.spec {
                GrammarSpec::JsonSchema(s) => Some(s.clone()),
                GrammarSpec::JsonObject => Some(serde_json::json!({"type": "object"})),
                _ => None,
            };
            match answer.and_then(|a| plan.grammar_or_answer(format, &a)) {
                Some(g) => Some((g, out.param, whole)),
                None => Some((out.spec, out.param, whole)),
            }
        }
        (Some(plan), None) => plan
            .grammar(format, open)
            .map(|(g, mode)| (g, "tools", mode)),
        (None, Some(out)) => Some((out.spec, out.param, whole)),
        (None, None) => None,
    };
    chosen
        .map(|(spec, param, mode)| constraints::compile(served, &spec, param, mode))
        .transpose()
}

pub async fn completions(
    State(state): State<Shared>,
    arrival: Option<Extension<RequestArrival>>,
    ApiJson(body): ApiJson<CompletionBody>,
) -> Result<Response, ApiError> {
    let arrived = arrival.map_or_else(Instant::now, |a| a.0 .0);
    let served = state.generative(&body.common.model)?;
    if body.echo == Some(true) {
        return Err(ApiError::unsupported("echo is not supported.", "echo"));
    }
    if body.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix is not supported.", "suffix"));
    }
    if body.best_of.is_some_and(|b| b != body.common.n_or_one()) {
        return Err(ApiError::unsupported(
            "best_of other than n is not supported.",
            "best_of",
        ));
    }
    let logprobs = match body.logprobs {
        None => None,
        Some(k @ 0..=20) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                format!("logprobs must be between 0 and 20; got {k}."),
                Some("logprobs"),
            ))
        }
    };
    let mut spec = params::validate(&body.common, served, logprobs)?;
    let output = body.common.constraints.output_grammar()?;
    let model = body.common.model;
    let prompt = body.prompt;
    let (prompts, constraint) = prepare::run(&state, &model, move |served| {
        let prompts = params::completion_prompts(served, &prompt)?;
        let constraint = output
            .map(|o| constraints::compile(served, &o.spec, o.param, ConstraintMode::Whole))
            .transpose()?;
        Ok((prompts, constraint))
    })
    .await?;
    spec.constraint = constraint;
    run(
        state,
        model,
        spec,
        prompts,
        Kind::Completion,
        Vec::new(),
        arrived,
    )
    .await
}

/// Cancels every submitted request when dropped (the handler or stream task went away).
struct CancelGuard(Vec<CancelHandle>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        for c in &self.0 {
            c.cancel_all();
        }
    }
}

fn submit_error(e: SubmitError) -> ApiError {
    match e {
        SubmitError::Refused(AdmissionError::QueueFull) => ApiError::overloaded(),
        SubmitError::Refused(e @ AdmissionError::TooLong { .. }) => {
            ApiError::context_too_long(e.to_string())
        }
        SubmitError::Refused(e @ AdmissionError::BadChoiceCount { .. }) => {
            ApiError::invalid(e.to_string(), Some("n"))
        }
        SubmitError::Refused(e) => ApiError::invalid(e.to_string(), Some("prompt")),
        SubmitError::Stopped => ApiError::internal("the engine has stopped"),
    }
}

struct ChoiceOut {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: Option<&'static str>,
    tokens: usize,
}

impl ChoiceOut {
    /// Appends a piece's text and log-probabilities; says whether it carried log-probabilities.
    fn absorb(&mut self, text: &str, logprobs: Vec<TokenLogprob>) -> bool {
        self.text.push_str(text);
        let any = !logprobs.is_empty();
        self.logprobs.extend(logprobs);
        any
    }
}

async fn run(
    state: Shared,
    model: String,
    spec: GenSpec,
    prompts: Vec<Vec<u32>>,
    kind: Kind,
    tool_names: Vec<String>,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let served = state.generative(&model)?;
    // One deadline for the whole request, from its arrival: reading the body and preparing the
    // prompt count against it too. Past it before generation starts: 408 (nothing was done).
    let deadline = state.request_timeout.map(|d| (arrived + d, d.as_secs()));
    if let Some((at, secs)) = deadline {
        if Instant::now() >= at {
            return Err(ApiError::timeout(secs));
        }
    }
    // Each prompt is one engine request, and all wait in the queue at once: more than it holds
    // could never succeed, however long the client retries.
    if prompts.len() > served.limits.max_waiting {
        return Err(ApiError::invalid(
            format!(
                "At most {} prompts fit in one request on this server (--max-waiting); got {}.",
                served.limits.max_waiting,
                prompts.len()
            ),
            Some("prompt"),
        ));
    }
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    let requests = prompts
        .into_iter()
        .map(|p| spec.request(served, p))
        .collect::<Result<Vec<_>, _>>()?;
    // Submitting waits for the engine thread to take the request (up to one step): off the async workers.
    let submitted = {
        let state = state.clone();
        let model = model.clone();
        tokio::task::spawn_blocking(move || {
            let served = state.generative(&model).map_err(|_| SubmitError::Stopped)?;
            let mut streams = Vec::with_capacity(requests.len());
            for r in requests {
                streams.push(served.engine.submit(r)?);
            }
            Ok::<_, SubmitError>(streams)
        })
        .await
    };
    let streams = submitted
        .unwrap_or(Err(SubmitError::Stopped))
        .map_err(submit_error)?;
    let n = spec.n;
    let total = n * streams.len();
    let guard = CancelGuard(streams.iter().map(|s| s.cancel.clone()).collect());
    let (tx, rx) = tokio::sync::mpsc::channel::<Piece>(256);
    for (p, stream) in streams.into_iter().enumerate() {
        let loaded = served.loaded.clone();
        let stops = spec.stops.clone();
        let tx = tx.clone();
        tokio::task::spawn_blocking(move || pump(loaded, stream, n, p * n, stops, deadline, tx));
    }
    drop(tx);
    let meta = Meta {
        id: new_id(if kind.is_chat() { "chatcmpl" } else { "cmpl" }),
        created: now(),
        model,
        kind,
        prompt_tokens,
        tool_names,
    };
    Ok(if spec.stream {
        stream_response(meta, total, spec.include_usage, rx, guard)
    } else {
        collect_response(meta, total, rx, guard).await
    })
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    prompt_tokens: usize,
    /// Tools the request declared (ChatWithTools).
    tool_names: Vec<String>,
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// Chat `logprobs` object (`content` entries with alternatives).
fn chat_logprobs(entries: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "token": e.token,
                "logprob": e.logprob,
                "bytes": e.bytes,
                "top_logprobs": e.top.iter().map(|(t, b, l)| json!({"token": t, "logprob": l, "bytes": b})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

/// Legacy completions `logprobs` object; `offset` is the text length before these tokens.
fn completion_logprobs(entries: &[TokenLogprob], mut offset: usize) -> Value {
    let mut text_offset = Vec::with_capacity(entries.len());
    for e in entries {
        text_offset.push(offset);
        offset += e.token.chars().count();
    }
    json!({
        "tokens": entries.iter().map(|e| e.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": entries.iter().map(|e| e.logprob).collect::<Vec<_>>(),
        "top_logprobs": entries.iter().map(|e| {
            let m: serde_json::Map<String, Value> = e.top.iter().map(|(t, _, l)| (t.clone(), json!(l))).collect();
            Value::Object(m)
        }).collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
}

async fn collect_response(
    meta: Meta,
    total: usize,
    mut rx: tokio::sync::mpsc::Receiver<Piece>,
    guard: CancelGuard,
) -> Response {
    let mut outs: Vec<ChoiceOut> = (0..total)
        .map(|_| ChoiceOut {
            text: String::new(),
            logprobs: Vec::new(),
            finish: None,
            tokens: 0,
        })
        .collect();
    let mut want_logprobs = false;
    let mut ended = 0;
    while ended < total {
        let Some(piece) = rx.recv().await else {
            return ApiError::internal("the generation ended without a result").into_response();
        };
        match piece {
            Piece::Delta {
                index,
                text,
                logprobs,
            } => want_logprobs |= outs[index].absorb(&text, logprobs),
            Piece::End {
                index,
                text,
                logprobs,
                reason,
                completion_tokens,
            } => {
                let o = &mut outs[index];
                want_logprobs |= o.absorb(&text, logprobs);
                o.finish = Some(reason);
                o.tokens = completion_tokens;
                ended += 1;
            }
            Piece::Failed(e) => return e.into_response(),
        }
    }
    drop(guard);
    let completion_tokens: usize = outs.iter().map(|o| o.tokens).sum();
    let choices: Vec<Value> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| match meta.kind {
            Kind::Chat | Kind::ChatWithTools => {
                let mut message = json!({ "role": "assistant", "content": o.text, "refusal": null });
                let mut finish = o.finish;
                if meta.kind == Kind::ChatWithTools {
                    let mut split = ToolCallSplitter::new(meta.tool_names.clone());
                    let mut content = split.push(&o.text);
                    let (rest, calls) = split.finish();
                    content.push_str(&rest);
                    if !calls.is_empty() {
                        message["content"] = if content.trim().is_empty() { Value::Null } else { json!(content.trim_end()) };
                        message["tool_calls"] = calls.iter().map(ToolCall::to_json).collect();
                        finish = Some("tool_calls");
                    }
                }
                json!({
                    "index": i,
                    "message": message,
                    "logprobs": if want_logprobs { chat_logprobs(&o.logprobs) } else { Value::Null },
                    "finish_reason": finish,
                })
            }
            Kind::Completion => json!({
                "index": i,
                "text": o.text,
                "logprobs": if want_logprobs { completion_logprobs(&o.logprobs, 0) } else { Value::Null },
                "finish_reason": o.finish,
            }),
        })
        .collect();
    let object = match meta.kind {
        Kind::Chat | Kind::ChatWithTools => "chat.completion",
        Kind::Completion => "text_completion",
    };
    Json(json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage(meta.prompt_tokens, completion_tokens),
    }))
    .into_response()
}

/// The chunks' choice entries for a choice's pieces: content (with the piece's log-probabilities
/// on the first entry; alone when there is no text) and tool-call deltas.
fn stream_choices(
    choice: &impl Fn(usize, Option<&str>, &[TokenLogprob], usize, Option<&str>) -> Value,
    index: usize,
    pieces: Vec<StreamPiece>,
    logprobs: Vec<TokenLogprob>,
    offset: &mut usize,
) -> Vec<Value> {
    let mut out = Vec::new();
    let mut lp = Some(logprobs);
    for p in pieces {
        match p {
            StreamPiece::Content(t) if t.is_empty() => {}
            StreamPiece::Content(t) => {
                let l = lp.take().unwrap_or_default();
                out.push(choice(index, Some(&t), &l, *offset, None));
                // `text_offset` counts the tokens' characters, as the non-streamed answer does.
                *offset += l.iter().map(|e| e.token.chars().count()).sum::<usize>();
            }
            StreamPiece::CallStart { index: k, id, name } => {
                let d = json!({ "index": k, "id": id, "type": "function", "function": { "name": name, "arguments": "" } });
                out.push(json!({ "index": index, "delta": { "tool_calls": [d] }, "logprobs": null, "finish_reason": null }));
            }
            StreamPiece::CallArgs { index: k, text } => {
                let d = json!({ "index": k, "function": { "arguments": text } });
                out.push(json!({ "index": index, "delta": { "tool_calls": [d] }, "logprobs": null, "finish_reason": null }));
            }
        }
    }
    if let Some(l) = lp.filter(|l| !l.is_empty()) {
        out.push(choice(index, Some(""), &l, *offset, None));
        *offset += l.iter().map(|e| e.token.chars().count()).sum::<usize>();
    }
    out
}

fn stream_response(
    meta: Meta,
    total: usize,
    include_usage: bool,
    mut rx: tokio::sync::mpsc::Receiver<Piece>,
    guard: CancelGuard,
) -> Response {
    let (sse_tx, sse_rx) = tokio::sync::mpsc::channel::<Result<Event, Infallible>>(64);
    let object = match meta.kind {
        Kind::Chat | Kind::ChatWithTools => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    };
    let chunk = move |choices: Value, usage_value: Option<Value>| -> Value {
        // `usage` only on the final chunk (the spec's chunk schema has no null usage).
        let mut v = json!({
            "id": meta.id, "object": object, "created": meta.created, "model": meta.model,
            "choices": choices,
        });
        if let Some(u) = usage_value {
            v["usage"] = u;
        }
        v
    };
    let kind = meta.kind;
    let prompt_tokens = meta.prompt_tokens;
    let tool_names = meta.tool_names.clone();
    let choice = move |index: usize,
                       text: Option<&str>,
                       lp: &[TokenLogprob],
                       offset: usize,
                       finish: Option<&str>|
          -> Value {
        let logprobs = if lp.is_empty() {
            Value::Null
        } else if kind.is_chat() {
            chat_logprobs(lp)
        } else {
            completion_logprobs(lp, offset)
        };
        match kind {
            Kind::Chat | Kind::ChatWithTools => {
                let delta = match text {
                    Some(t) => json!({ "content": t }),
                    None => json!({}),
                };
                json!({ "index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish })
            }
            Kind::Completion => {
                json!({ "index": index, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish })
            }
        }
    };
    tokio::spawn(async move {
        let _guard = guard;
        let send = |v: Value| {
            let tx = sse_tx.clone();
            async move {
                tx.send(Ok(Event::default().data(v.to_string())))
                    .await
                    .is_ok()
            }
        };
        if kind.is_chat() {
            for i in 0..total {
                let first = json!({ "index": i, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null });
                if !send(chunk(json!([first]), None)).await {
                    return;
                }
            }
        }
        let mut offsets = vec![0usize; total];
        let mut streamers: Vec<Option<ToolCallStreamer>> = (0..total)
            .map(|_| Some(ToolCallStreamer::new(tool_names.clone())))
            .collect();
        let with_tools = kind == Kind::ChatWithTools;
        let mut completion_tokens = 0;
        let mut ended = 0;
        while ended < total {
            let piece = tokio::select! {
                p = rx.recv() => p,
                _ = sse_tx.closed() => return, // the client went away: the guard cancels the rest
            };
            let Some(piece) = piece else { break };
            match piece {
                Piece::Delta {
                    index,
                    text,
                    logprobs,
                } => {
                    let pieces = match streamers[index].as_mut() {
                        Some(st) if with_tools => st.push(&text),
                        _ => vec![StreamPiece::Content(text)],
                    };
                    for c in stream_choices(&choice, index, pieces, logprobs, &mut offsets[index]) {
                        if !send(chunk(json!([c]), None)).await {
                            return;
                        }
                    }
                }
                Piece::End {
                    index,
                    text,
                    logprobs,
                    reason,
                    completion_tokens: n,
                } => {
                    let (pieces, called) = match streamers[index].take() {
                        Some(mut st) if with_tools => {
                            let mut pieces = st.push(&text);
                            let (rest, called) = st.finish();
                            pieces.extend(rest);
                            (pieces, called)
                        }
                        _ => (vec![StreamPiece::Content(text)], false),
                    };
                    for c in stream_choices(&choice, index, pieces, logprobs, &mut offsets[index]) {
                        if !send(chunk(json!([c]), None)).await {
                            return;
                        }
                    }
                    let reason = if called { "tool_calls" } else { reason };
                    let c = choice(index, None, &[], 0, Some(reason));
                    if !send(chunk(json!([c]), None)).await {
                        return;
                    }
                    completion_tokens += n;
                    ended += 1;
                }
                Piece::Failed(e) => {
                    let _ = send(e.body()).await;
                    break;
                }
            }
        }
        if ended == total && include_usage {
            let u = usage(prompt_tokens, completion_tokens);
            if !send(chunk(json!([]), Some(u))).await {
                return;
            }
        }
        let _ = sse_tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(sse_rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}
