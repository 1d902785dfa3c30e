//! A chat conversation, from a validated body to a running generation: the one implementation of
//! templates, tools, output constraints and stops behind every chat-shaped wire API (chat
//! completions, OpenAI's Responses, Anthropic's Messages). Those translate their request into a
//! `ChatBody` and shape the answer; everything in between happens here, once.
use super::constraints::{self, OutputGrammar};
use super::errors::ApiError;
use super::generation::{self, Generation};
use super::origin::Origin;
use super::params::{self, ChatBody, GenSpec};
use super::prepare;
use super::tool_choice::ToolPlan;
use super::{AppState, ServedModel};
use crate::chat_template::ToolCallFormat;
use crate::engine::constraint::{Constraint, ConstraintMode};
use crate::grammar::GrammarSpec;
use serde_json::Value;
use std::sync::Arc;

/// A running chat generation and what shaping its answer needs.
pub struct ChatRun {
    pub generation: Generation,
    pub spec: GenSpec,
    pub model: String,
    /// The tools the model was shown (their replies' `<tool_call>`s become calls); `None`: none.
    pub tool_names: Option<Vec<String>>,
}

/// What to do when the conversation does not fit the context.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Refuse with 400 `context_length_exceeded`.
    Refuse,
    /// Drop the oldest turns (never a system message) until it fits (Responses' `truncation: auto`).
    DropOldest,
}

/// Validates `body`, renders and tokenizes its conversation (off the async workers), compiles its
/// constraint and starts generating. `logprobs`: alternatives asked for per token.
pub async fn start(
    state: &Arc<AppState>,
    body: ChatBody,
    logprobs: Option<usize>,
    overflow: Overflow,
    origin: &Origin,
) -> Result<ChatRun, ApiError> {
    let served = state.generative(&body.common.model)?;
    let mut spec = params::validate(&body.common, served, logprobs)?;
    let tools = body.tool_plan()?;
    let output = body.common.constraints.output_grammar()?;
    let tool_names = tools.as_ref().map(ToolPlan::names);
    let model = body.common.model;
    let messages = body.messages;
    let max_tokens = spec.max_tokens();
    // Rendering, tokenizing and compiling a grammar are CPU work: off the async workers.
    let (prompt, constraint) = prepare::run(state, &model, move |served| {
        let raw = tools.as_ref().map(|t| &t.raw);
        let prompt = fitting_prompt(served, messages, raw, max_tokens, overflow)?;
        let constraint = chat_constraint(served, tools.as_ref(), output)?;
        Ok((prompt, constraint))
    })
    .await?;
    spec.constraint = constraint;
    let generation = generation::start(state, &model, &spec, vec![prompt], origin).await?;
    Ok(ChatRun {
        generation,
        spec,
        model,
        tool_names,
    })
}

/// The length in tokens of the prompt `body` renders (its tools included), without generating.
pub async fn prompt_tokens(state: &Arc<AppState>, body: ChatBody) -> Result<usize, ApiError> {
    state.generative(&body.common.model)?;
    let tools = body.tool_plan()?;
    let model = body.common.model;
    let messages = body.messages;
    prepare::run(state, &model, move |served| {
        let raw = tools.as_ref().map(|t| &t.raw);
        params::chat_prompt(served, &messages, true, raw).map(|p| p.len())
    })
    .await
}

/// The conversation's prompt; with `DropOldest`, the oldest turns are dropped until the prompt and
/// the reply fit the context.
fn fitting_prompt(
    served: &ServedModel,
    mut messages: Vec<Value>,
    tools: Option<&Value>,
    max_tokens: Option<usize>,
    overflow: Overflow,
) -> Result<Vec<u32>, ApiError> {
    let ctx = served.max_sequence_len();
    loop {
        let err = match params::chat_prompt(served, &messages, true, tools) {
            Ok(p) if overflow == Overflow::Refuse => return Ok(p),
            Ok(p) if p.len() + max_tokens.unwrap_or(1) <= ctx => return Ok(p),
            Ok(p) => ApiError::context_too_long(format!(
                "This model's maximum context length is {ctx} tokens; the conversation needs {} tokens even with its oldest turns dropped.",
                p.len() + max_tokens.unwrap_or(1)
            )),
            Err(e) if e.code == Some("context_length_exceeded") => e,
            Err(e) => return Err(e),
        };
        if overflow == Overflow::Refuse || !drop_oldest_turn(&mut messages) {
            return Err(err);
        }
    }
}

/// Removes the oldest message that is not a system message, with the tool results that answer it;
/// false when only system messages (or the last message) are left.
fn drop_oldest_turn(messages: &mut Vec<Value>) -> bool {
    let is_system = |m: &Value| {
        matches!(
            m.get("role").and_then(Value::as_str),
            Some("system" | "developer")
        )
    };
    let Some(i) = messages.iter().position(|m| !is_system(m)) else {
        return false;
    };
    if i + 1 >= messages.len() {
        return false; // the newest message is what the reply answers
    }
    messages.remove(i);
    // Tool results whose call was dropped would answer nothing.
    while i < messages.len() - 1 && messages[i].get("role").and_then(Value::as_str) == Some("tool")
    {
        messages.remove(i);
    }
    true
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roles(ms: &[Value]) -> Vec<&str> {
        ms.iter()
            .map(|m| m["role"].as_str().unwrap_or("?"))
            .collect()
    }

    #[test]
    fn dropping_turns_keeps_system_messages_and_the_newest_and_takes_orphaned_tool_results() {
        let mut ms = vec![
            json!({"role": "system", "content": "s"}),
            json!({"role": "assistant", "content": null, "tool_calls": []}),
            json!({"role": "tool", "content": "r1", "tool_call_id": "a"}),
            json!({"role": "tool", "content": "r2", "tool_call_id": "b"}),
            json!({"role": "user", "content": "q"}),
        ];
        assert!(drop_oldest_turn(&mut ms));
        assert_eq!(roles(&ms), ["system", "user"]);
        assert!(!drop_oldest_turn(&mut ms), "the newest message stays");
        assert_eq!(roles(&ms), ["system", "user"]);
    }
}
