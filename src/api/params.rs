//! Request bodies of the generation endpoints and their validation: OpenAI's sampling and length
//! parameters plus the common extensions (top_k, min_p, repetition_penalty, min_tokens, ignore_eos),
//! checked into a `GenSpec`; prompts from text, token arrays or chat messages. Unknown fields are
//! ignored; a wrong value is a 400 that names the parameter.
use super::constraints::ConstraintParams;
use super::errors::ApiError;
use super::prepare;
use super::tool_choice::{self, ToolPlan};
use super::ServedModel;
use crate::chat_template::ChatMessage;
use crate::engine::constraint::Constraint;
use crate::engine::sampler::SamplingParams;
use crate::engine::scheduler::{GenerationRequest, MAX_CHOICES};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

#[derive(Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The fields both generation endpoints share.
#[derive(Deserialize)]
pub struct CommonParams {
    pub model: String,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<i64>,
    min_p: Option<f32>,
    seed: Option<i64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    logit_bias: Option<HashMap<String, f32>>,
    stop: Option<StopSpec>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    ignore_eos: Option<bool>,
    min_tokens: Option<i64>,
    n: Option<i64>,
    /// `response_format` and vLLM's `structured_outputs` / `guided_*`.
    #[serde(flatten)]
    pub constraints: ConstraintParams,
}

impl CommonParams {
    pub fn n_or_one(&self) -> i64 {
        self.n.unwrap_or(1)
    }
}

#[derive(Deserialize)]
pub struct CompletionBody {
    pub prompt: Value,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
    #[serde(flatten)]
    pub common: CommonParams,
}

#[derive(Deserialize)]
pub struct ChatBody {
    pub messages: Vec<Value>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub common: CommonParams,
}

impl ChatBody {
    /// The tools that take part in this request (none with `tool_choice: "none"`), checked.
    pub fn tool_plan(&self) -> Result<Option<ToolPlan>, ApiError> {
        tool_choice::plan(
            self.tools.as_deref(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls,
        )
    }
}

/// An assistant turn's `tool_calls` as templates expect them: `arguments` parsed from the JSON string
/// the API carries into an object (kept as the string when it does not parse).
fn template_tool_calls(calls: &Value) -> Value {
    let mut calls = calls.clone();
    if let Some(list) = calls.as_array_mut() {
        for c in list {
            if let Some(args) = c.pointer_mut("/function/arguments") {
                if let Some(parsed) = args
                    .as_str()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                {
                    *args = parsed;
                }
            }
        }
    }
    calls
}

/// A validated generation, before the prompt is known.
pub struct GenSpec {
    pub sampling: SamplingParams,
    max_tokens: Option<usize>,
    min_tokens: usize,
    ignore_eos: bool,
    pub n: usize,
    pub stops: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// The grammar the output must follow (compiled), if any.
    pub constraint: Option<Constraint>,
}

fn check_range(v: Option<f32>, lo: f32, hi: f32, name: &'static str) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => Err(ApiError::invalid(
            format!("{name} must be between {lo} and {hi}; got {x}."),
            Some(name),
        )),
        _ => Ok(()),
    }
}

/// Checks the shared parameters; `logprobs` is the number of alternatives asked for (None: no
/// logprobs).
pub fn validate(
    c: &CommonParams,
    served: &ServedModel,
    logprobs: Option<usize>,
) -> Result<GenSpec, ApiError> {
    let max_tokens = match c.max_completion_tokens.or(c.max_tokens) {
        Some(m) if m < 1 => {
            let name = if c.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(ApiError::invalid(
                format!("{name} must be at least 1; got {m}."),
                Some(name),
            ));
        }
        Some(m) => Some(m as usize),
        None => None,
    };
    check_range(c.temperature, 0.0, 2.0, "temperature")?;
    // top_p 0 is valid (as in OpenAI's API): only the most likely token is kept.
    check_range(c.top_p, 0.0, 1.0, "top_p")?;
    check_range(c.min_p, 0.0, 1.0, "min_p")?;
    check_range(c.presence_penalty, -2.0, 2.0, "presence_penalty")?;
    check_range(c.frequency_penalty, -2.0, 2.0, "frequency_penalty")?;
    if let Some(r) = c.repetition_penalty {
        if !(r > 0.0 && r <= 10.0) {
            return Err(ApiError::invalid(
                format!("repetition_penalty must be in (0, 10]; got {r}."),
                Some("repetition_penalty"),
            ));
        }
    }
    // Where the request sets no sampling value, the checkpoint's `generation_config.json` does (as
    // vLLM's `--generation-config auto`), else OpenAI's defaults.
    let defaults = served.loaded.generation_defaults;
    let top_k = match c.top_k {
        None => defaults.top_k.unwrap_or(0) as usize,
        Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => k as usize,
        Some(k) => {
            return Err(ApiError::invalid(
                format!("top_k must be -1 (off) or positive; got {k}."),
                Some("top_k"),
            ))
        }
    };
    let n = match c.n {
        None => 1,
        Some(n) if n >= 1 && n as usize <= MAX_CHOICES => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                format!("n must be between 1 and {MAX_CHOICES}; got {n}."),
                Some("n"),
            ))
        }
    };
    let min_tokens = match c.min_tokens {
        Some(m) if m < 0 => {
            return Err(ApiError::invalid(
                "min_tokens must not be negative.",
                Some("min_tokens"),
            ))
        }
        m => m.unwrap_or(0) as usize,
    };
    if let Some(max) = max_tokens {
        if min_tokens > max {
            return Err(ApiError::invalid(
                "min_tokens must not exceed max_tokens.",
                Some("min_tokens"),
            ));
        }
    }
    let stops = match &c.stop {
        None => vec![],
        Some(StopSpec::One(s)) => vec![s.clone()],
        Some(StopSpec::Many(v)) => v.clone(),
    };
    if stops.len() > 4 || stops.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid(
            "stop takes up to 4 non-empty strings.",
            Some("stop"),
        ));
    }
    let vocab = served.loaded.model.vocab();
    let mut logit_bias = Vec::new();
    for (k, &v) in c.logit_bias.iter().flatten() {
        let id = k.parse::<u32>().ok().filter(|&t| (t as usize) < vocab);
        let Some(id) = id else {
            return Err(ApiError::invalid(
                format!("logit_bias key `{k}` is not a token id of this model (0..{vocab})."),
                Some("logit_bias"),
            ));
        };
        if !(-100.0..=100.0).contains(&v) {
            return Err(ApiError::invalid(
                format!("logit_bias values must be between -100 and 100; got {v}."),
                Some("logit_bias"),
            ));
        }
        logit_bias.push((id, v));
    }
    logit_bias.sort_by_key(|&(t, _)| t);
    let sampling = SamplingParams {
        temperature: c.temperature.or(defaults.temperature).unwrap_or(1.0),
        top_k,
        top_p: c.top_p.or(defaults.top_p).unwrap_or(1.0),
        min_p: c.min_p.unwrap_or(0.0),
        seed: c.seed.map(|s| s as u64),
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        presence_penalty: c.presence_penalty.unwrap_or(0.0),
        frequency_penalty: c.frequency_penalty.unwrap_or(0.0),
        logit_bias,
        logprobs,
    };
    let stream = c.stream.unwrap_or(false);
    Ok(GenSpec {
        sampling,
        max_tokens,
        min_tokens,
        ignore_eos: c.ignore_eos.unwrap_or(false),
        n,
        stops,
        stream,
        constraint: None,
        include_usage: stream
            && c.stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
    })
}

impl GenSpec {
    /// `max_tokens` as asked (`None`: what the context leaves, up to 4096).
    pub fn max_tokens(&self) -> Option<usize> {
        self.max_tokens
    }

    /// The engine request for `prompt`; a 400 when prompt + max_tokens exceed the context.
    pub fn request(
        &self,
        served: &ServedModel,
        prompt: Vec<u32>,
    ) -> Result<GenerationRequest, ApiError> {
        if prompt.is_empty() {
            return Err(ApiError::invalid("The prompt is empty.", Some("prompt")));
        }
        let ctx = served.max_sequence_len();
        let max_tokens = self
            .max_tokens
            .unwrap_or_else(|| ctx.saturating_sub(prompt.len()).clamp(1, 4096));
        if prompt.len() + max_tokens > ctx {
            return Err(ApiError::context_too_long(format!(
                "This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({} in the prompt, {max_tokens} for the completion). Please reduce the length of the prompt or the completion.",
                prompt.len() + max_tokens,
                prompt.len()
            )));
        }
        Ok(GenerationRequest {
            prompt,
            sampling: self.sampling.clone(),
            max_tokens,
            min_tokens: self.min_tokens.min(max_tokens),
            stop_ids: served.loaded.tokenizer.stop_ids.clone(),
            ignore_eos: self.ignore_eos,
            n: self.n,
            constraint: self.constraint.clone(),
            tenant: None,
        })
    }
}

/// Token ids of a text prompt (bos added when the model wants it).
pub fn text_prompt(
    served: &ServedModel,
    text: &str,
    param: &'static str,
) -> Result<Vec<u32>, ApiError> {
    prepare::check_prompt_bytes(served, text.len())?;
    served
        .loaded
        .tokenizer
        .encode(text, true)
        .map_err(|e| ApiError::invalid(e.to_string(), Some(param)))
}

/// Checks token ids given directly by the client.
pub fn token_prompt(
    served: &ServedModel,
    ids: &[Value],
    param: &'static str,
) -> Result<Vec<u32>, ApiError> {
    let vocab = served.loaded.model.vocab() as u64;
    ids.iter()
        .map(|v| match v.as_u64() {
            Some(t) if t < vocab => Ok(t as u32),
            _ => Err(ApiError::invalid(
                format!("Token ids must be integers in 0..{vocab}."),
                Some(param),
            )),
        })
        .collect()
}

/// The prompts of a legacy completion: a string, a list of strings, a token array, or a list of
/// token arrays.
pub fn completion_prompts(served: &ServedModel, prompt: &Value) -> Result<Vec<Vec<u32>>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "prompt must be a string, a list of strings, a list of token ids, or a list of lists of token ids.",
            Some("prompt"),
        )
    };
    match prompt {
        Value::String(s) => Ok(vec![text_prompt(served, s, "prompt")?]),
        Value::Array(items) if items.is_empty() => Err(bad()),
        Value::Array(items) if items.iter().all(Value::is_number) => {
            Ok(vec![token_prompt(served, items, "prompt")?])
        }
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => text_prompt(served, s, "prompt"),
                Value::Array(ids) if !ids.is_empty() => token_prompt(served, ids, "prompt"),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

/// Where message `i`'s content stands in a rendering (private-use characters no text has).
fn placeholder(i: usize) -> String {
    format!("\u{F8F0}{i}\u{F8F1}")
}

/// Tokenizes a rendering whose message contents are placeholders: the markup between them with
/// control tokens parsed, each content as plain text.
fn encode_with_plain_contents(
    tok: &crate::tokenizer::ModelTokenizer,
    rendered: &str,
    contents: &[String],
) -> Result<Vec<u32>, crate::tokenizer::TokenizerError> {
    let mut ids = Vec::new();
    let mut rest = rendered;
    while let Some(start) = rest.find('\u{F8F0}') {
        let after = &rest[start + '\u{F8F0}'.len_utf8()..];
        let Some(end) = after.find('\u{F8F1}') else {
            break;
        };
        let Some(content) = after[..end]
            .parse::<usize>()
            .ok()
            .and_then(|i| contents.get(i))
        else {
            break;
        };
        if start > 0 {
            ids.extend(tok.encode(&rest[..start], false)?);
        }
        ids.extend(tok.encode_plain(content)?);
        rest = &after[end + '\u{F8F1}'.len_utf8()..];
    }
    if !rest.is_empty() {
        ids.extend(tok.encode(rest, false)?);
    }
    Ok(ids)
}

/// Chat messages rendered with the model's template and tokenized.
pub fn chat_prompt(
    served: &ServedModel,
    messages: &[Value],
    add_generation_prompt: bool,
    tools: Option<&Value>,
) -> Result<Vec<u32>, ApiError> {
    let mut msgs = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(format!("messages[{i}] needs a role."), Some("messages"))
        })?;
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return Err(ApiError::invalid(
                format!("messages[{i}]: unknown role `{role}`."),
                Some("messages"),
            ));
        }
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match p.get("type").and_then(Value::as_str) {
                        Some("text") => match p.get("text").and_then(Value::as_str) {
                            Some(t) => text.push_str(t),
                            None => {
                                return Err(ApiError::invalid(
                                    format!("messages[{i}]: a text part needs `text`."),
                                    Some("messages"),
                                ))
                            }
                        },
                        Some(other) => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}]: content parts of type `{other}` are not supported by this model."),
                                Some("messages"),
                            ))
                        }
                        None => {
                            return Err(ApiError::invalid(
                                format!("messages[{i}]: each content part needs a type."),
                                Some("messages"),
                            ))
                        }
                    }
                }
                text
            }
            Some(Value::Null) | None => String::new(),
            _ => {
                return Err(ApiError::invalid(
                    format!(
                        "messages[{i}]: content must be a string or an array of content parts."
                    ),
                    Some("messages"),
                ))
            }
        };
        let role = if role == "developer" { "system" } else { role };
        let text_field = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
        msgs.push(ChatMessage {
            role: role.to_string(),
            content: Value::String(content),
            tool_calls: m
                .get("tool_calls")
                .filter(|c| c.is_array())
                .map(template_tool_calls),
            tool_call_id: text_field("tool_call_id"),
            name: text_field("name"),
        });
    }
    if msgs.is_empty() {
        return Err(ApiError::invalid(
            "messages must not be empty.",
            Some("messages"),
        ));
    }
    let text_bytes: usize = msgs
        .iter()
        .map(|m| m.content.as_str().map_or(0, str::len))
        .sum();
    prepare::check_prompt_bytes(served, text_bytes)?;
    let template = served.loaded.chat_template.as_ref().ok_or_else(|| {
        ApiError::invalid(
            format!(
                "The model `{}` has no chat template (it is a base model); use /v1/completions.",
                served.loaded.name
            ),
            Some("model"),
        )
    })?;
    let tok = &served.loaded.tokenizer;
    let bad = |e: &dyn std::fmt::Display| ApiError::invalid(e.to_string(), Some("messages"));
    let typed_markup = msgs.iter().any(|m| {
        m.content
            .as_str()
            .is_some_and(|c| tok.mentions_control_token(c))
    });
    let mut ids = if typed_markup {
        // Control tokens typed in a message are text: the template's own markup is tokenized as
        // markup, each message's content as plain text (OpenAI behaves so).
        let mut contents = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter_mut().enumerate() {
            let text = m.content.as_str().unwrap_or_default().to_string();
            m.content = Value::String(placeholder(i));
            contents.push(text);
        }
        let text = template
            .render_with_tools(&msgs, add_generation_prompt, tools)
            .map_err(|e| bad(&e))?;
        encode_with_plain_contents(tok, &text, &contents).map_err(|e| bad(&e))?
    } else {
        let text = template
            .render_with_tools(&msgs, add_generation_prompt, tools)
            .map_err(|e| bad(&e))?;
        tok.encode(&text, false).map_err(|e| bad(&e))?
    };
    if let (true, Some(bos)) = (tok.add_bos, tok.bos_id) {
        if ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    Ok(ids)
}
