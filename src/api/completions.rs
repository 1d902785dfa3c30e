//! `POST /v1/chat/completions` and `POST /v1/completions`: validate, submit one engine request per
//! prompt (each with `n` choices), and answer either as one JSON response or as an SSE stream of
//! chunks (a role chunk per choice, content deltas, exactly one chunk with `finish_reason` per
//! choice, an optional usage chunk, then `[DONE]`), in OpenAI's wire format.
use super::chat::{self, Overflow};
use super::constraints;
use super::errors::ApiError;
use super::generation::{self, new_id, now, CancelGuard, Generation};
use super::marking::{self, Mark, RequestMarks};
use super::origin::Origin;
use super::params::{self, ChatBody, CompletionBody, GenSpec};
use super::prepare;
use super::pump::{Piece, TokenLogprob};
use super::tools::{StreamPiece, ToolCall, ToolCallSplitter, ToolCallStreamer};
use super::AppState;
use crate::engine::constraint::ConstraintMode;
use crate::provenance::ChoiceContent;
use axum::extract::{FromRequest, Request, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;

type Shared = Arc<AppState>;

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
    origin: Origin,
    marks: RequestMarks,
    ApiJson(body): ApiJson<ChatBody>,
) -> Result<Response, ApiError> {
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
    let run = chat::start(&state, body, logprobs, Overflow::Refuse, &origin).await?;
    let kind = if run.tool_names.is_some() {
        Kind::ChatWithTools
    } else {
        Kind::Chat
    };
    let mark = Mark::new(&state, &run.model, &run.spec.sampling, marks)?;
    let meta = Meta {
        id: new_id("chatcmpl"),
        created: now(),
        model: run.model,
        kind,
        prompt_tokens: run.generation.prompt_tokens,
        tool_names: run.tool_names.unwrap_or_default(),
        mark,
    };
    Ok(answer(meta, &run.spec, run.generation).await)
}

pub async fn completions(
    State(state): State<Shared>,
    origin: Origin,
    marks: RequestMarks,
    ApiJson(body): ApiJson<CompletionBody>,
) -> Result<Response, ApiError> {
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
    let generation = generation::start(&state, &model, &spec, prompts, &origin).await?;
    let mark = Mark::new(&state, &model, &spec.sampling, marks)?;
    let meta = Meta {
        id: new_id("cmpl"),
        created: now(),
        model,
        kind: Kind::Completion,
        prompt_tokens: generation.prompt_tokens,
        tool_names: Vec::new(),
        mark,
    };
    Ok(answer(meta, &spec, generation).await)
}

/// The answer to a started generation: one JSON object, or an SSE stream of chunks.
async fn answer(meta: Meta, spec: &GenSpec, generation: Generation) -> Response {
    let Generation {
        pieces,
        guard,
        choices,
        ..
    } = generation;
    let mark = meta.mark.clone();
    let mut resp = if spec.stream {
        stream_response(meta, choices, spec.include_usage, pieces, guard)
    } else {
        collect_response(meta, choices, pieces, guard).await
    };
    if resp.status().is_success() {
        mark.disclose(&mut resp);
    }
    resp
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

struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    prompt_tokens: usize,
    /// Tools the request declared (ChatWithTools).
    tool_names: Vec<String>,
    mark: Mark,
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
                ..
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
    let mut body = json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage(meta.prompt_tokens, completion_tokens),
    });
    body["provenance"] = meta.mark.provenance(&body);
    let reasons: Vec<&str> = outs.iter().filter_map(|o| o.finish).collect();
    meta.mark.complete(
        meta.prompt_tokens,
        completion_tokens,
        &finish_list(&reasons),
    );
    Json(body).into_response()
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

/// The finish reasons of a request's choices, each once, comma-separated.
fn finish_list(reasons: &[&str]) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for r in reasons {
        if !seen.contains(r) {
            seen.push(r);
        }
    }
    seen.join(",")
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
    let mark = meta.mark.clone();
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
        // What each choice streamed (text, and calls as name and arguments): the provenance's digest.
        let mut sent: Vec<ChoiceContent> = vec![ChoiceContent::default(); total];
        let mut reasons: Vec<&str> = Vec::new();
        let mut provenance: Option<Value> = None;
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
                    marking::record(&mut sent[index], &pieces);
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
                    ..
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
                    marking::record(&mut sent[index], &pieces);
                    for c in stream_choices(&choice, index, pieces, logprobs, &mut offsets[index]) {
                        if !send(chunk(json!([c]), None)).await {
                            return;
                        }
                    }
                    let reason = if called { "tool_calls" } else { reason };
                    reasons.push(reason);
                    completion_tokens += n;
                    ended += 1;
                    let c = choice(index, None, &[], 0, Some(reason));
                    let mut finish_chunk = chunk(json!([c]), None);
                    if ended == total {
                        // The last choice's finish chunk carries the provenance (and so does the
                        // usage chunk after it, when asked for): never a chunk of its own, which
                        // clients reading `choices[0]` of every chunk would trip over.
                        let p = mark.provenance_of(&sent);
                        mark.complete(prompt_tokens, completion_tokens, &finish_list(&reasons));
                        finish_chunk["provenance"] = p.clone();
                        provenance = Some(p);
                    }
                    if !send(finish_chunk).await {
                        return;
                    }
                }
                Piece::Failed(e) => {
                    let _ = send(e.body()).await;
                    break;
                }
            }
        }
        if ended == total && include_usage {
            let u = usage(prompt_tokens, completion_tokens);
            let mut last = chunk(json!([]), Some(u));
            if let Some(p) = provenance {
                last["provenance"] = p;
            }
            if !send(last).await {
                return;
            }
        }
        let _ = sse_tx.send(Ok(Event::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(sse_rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}
