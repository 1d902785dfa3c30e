//! Tool calls in generated text. Models whose chat template describes tools in the Hermes style
//! (Qwen 2.5 among them) answer a call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`;
//! small models often answer with just the JSON object instead, bare or in a ```json fence. The
//! `ToolCallSplitter` passes ordinary content through as it streams, holds back everything from the
//! first `<tool_call>` on (and a reply that so far could be a bare JSON call), and at the end turns
//! the calls into OpenAI `tool_calls`. A bare object counts only when it is the whole reply and names
//! a tool the client declared.
use serde_json::{json, Value};

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// One call the model made, in OpenAI's shape (arguments as a JSON string).
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl ToolCall {
    pub fn to_json(&self) -> Value {
        json!({ "id": self.id, "type": "function", "function": { "name": self.name, "arguments": self.arguments } })
    }
    /// The streamed form: the whole call in one delta entry.
    pub fn to_delta(&self, index: usize) -> Value {
        json!({ "index": index, "id": self.id, "type": "function", "function": { "name": self.name, "arguments": self.arguments } })
    }
}

#[derive(Default)]
pub struct ToolCallSplitter {
    held: String,
    in_calls: bool,
    /// Nothing but (the start of) a JSON object or a code fence has come yet.
    maybe_bare: bool,
    tool_names: Vec<String>,
}

/// Could `t` (trimmed) still grow into a bare JSON call, fenced or not?
fn could_be_bare(t: &str) -> bool {
    const FENCE: &str = "```json";
    t.is_empty()
        || t.starts_with('{')
        || t.starts_with(FENCE)
        || (t.len() < FENCE.len() && FENCE.starts_with(t))
}

impl ToolCallSplitter {
    /// A splitter for a reply to a request that declared these tools.
    pub fn new(tool_names: Vec<String>) -> Self {
        Self {
            maybe_bare: true,
            tool_names,
            ..Self::default()
        }
    }

    /// Takes the next piece of generated text; returns the content that is safe to emit now.
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        if self.in_calls {
            return String::new();
        }
        if self.maybe_bare {
            if could_be_bare(self.held.trim_start()) {
                return String::new();
            }
            self.maybe_bare = false;
        }
        if let Some(pos) = self.held.find(OPEN) {
            self.in_calls = true;
            let rest = self.held.split_off(pos);
            return std::mem::replace(&mut self.held, rest);
        }
        // Hold back a tail that could be the start of `<tool_call>`.
        let keep = (1..OPEN.len())
            .rev()
            .find(|&n| self.held.ends_with(&OPEN[..n]))
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let rest = self.held.split_off(cut);
        std::mem::replace(&mut self.held, rest)
    }

    /// The content still held and the calls, once generation has ended. Text that looked like a
    /// call but does not parse is returned as content.
    pub fn finish(self) -> (String, Vec<ToolCall>) {
        if self.maybe_bare && !self.in_calls {
            let t = self.held.trim();
            let inner = t
                .strip_prefix("```json")
                .and_then(|x| x.strip_suffix("```"))
                .unwrap_or(t);
            if let Some(call) = parse_call(inner).filter(|c| self.tool_names.contains(&c.name)) {
                return (String::new(), vec![call]);
            }
        }
        if !self.in_calls {
            return (self.held, Vec::new());
        }
        let mut calls = Vec::new();
        // Text between and after the calls is kept as content.
        let mut outside = String::new();
        let mut rest = self.held.as_str();
        while let Some(start) = rest.find(OPEN) {
            outside.push_str(&rest[..start]);
            let body = &rest[start + OPEN.len()..];
            let (inner, next) = match body.find(CLOSE) {
                Some(end) => (&body[..end], &body[end + CLOSE.len()..]),
                None => (body, ""),
            };
            if let Some(call) = parse_call(inner) {
                calls.push(call);
            }
            rest = next;
        }
        outside.push_str(rest);
        if calls.is_empty() {
            (self.held, calls)
        } else if outside.trim().is_empty() {
            (String::new(), calls)
        } else {
            (outside.trim().to_string(), calls)
        }
    }
}

/// A call's JSON object as the model wrote it; `arguments` kept as its raw text.
#[derive(serde::Deserialize)]
struct RawCall<'a> {
    name: String,
    #[serde(borrow, default)]
    arguments: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    parameters: Option<&'a serde_json::value::RawValue>,
}

/// The name and the raw `arguments` text of a call object (a JSON string holding the arguments
/// is unwrapped). The raw text is what streaming sends in pieces, so both forms agree.
fn split_call(inner: &str) -> Option<(String, String)> {
    let c: RawCall = serde_json::from_str(inner.trim()).ok()?;
    let raw = c.arguments.or(c.parameters).map(|r| r.get());
    let arguments = match raw {
        None => "{}".to_string(),
        Some(r) if r.starts_with('"') => serde_json::from_str::<String>(r).ok()?,
        Some(r) => r.to_string(),
    };
    Some((c.name, arguments))
}

fn new_call_id() -> String {
    format!("call_{:016x}", rand::random::<u64>())
}

fn parse_call(inner: &str) -> Option<ToolCall> {
    let (name, arguments) = split_call(inner)?;
    Some(ToolCall {
        id: new_call_id(),
        name,
        arguments,
    })
}

/// What a streamed call looks like so far: its name once known, and the raw arguments text
/// written so far (complete when the arguments value has closed).
#[derive(Debug, PartialEq)]
struct PartialCall {
    name: String,
    args: String,
}

/// Reads the start of a call object (`{"name": "...", "arguments": ` then the arguments value
/// as far as written) from `body`, the text after `<tool_call>`. `None` until the name and the
/// start of the arguments are there, or when the object has another shape (then the call is
/// sent whole at the end).
fn partial_call(body: &str) -> Option<PartialCall> {
    let rest = body.trim_start().strip_prefix('{')?.trim_start();
    let rest = rest
        .strip_prefix("\"name\"")?
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    // The name: a complete JSON string.
    let bytes = rest.as_bytes();
    if bytes.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    let mut escaped = false;
    while i < bytes.len() {
        match bytes[i] {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => break,
            _ => {}
        }
        i += 1;
    }
    if i >= bytes.len() {
        return None;
    }
    let name: String = serde_json::from_str(&rest[..=i]).ok()?;
    let rest = rest[i + 1..].trim_start().strip_prefix(',')?.trim_start();
    let rest = rest
        .strip_prefix("\"arguments\"")?
        .trim_start()
        .strip_prefix(':')?;
    let value = rest.trim_start();
    if !value.starts_with('{') {
        return None; // arguments as a string (or not yet begun): sent whole at the end
    }
    // The arguments object as far as written: up to where its braces balance.
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    let mut end = value.len();
    for (k, ch) in value.char_indices() {
        if in_str {
            match ch {
                _ if esc => esc = false,
                '\\' => esc = true,
                '"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match ch {
            '"' => in_str = true,
            '{' | '[' => depth += 1,
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    end = k + 1;
                    break;
                }
            }
            _ => {}
        }
    }
    Some(PartialCall {
        name,
        args: value[..end].to_string(),
    })
}

/// One piece of a streamed reply with tools.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamPiece {
    Content(String),
    /// The first delta of call `index`: its id and name (arguments follow).
    CallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More of call `index`'s arguments text.
    CallArgs {
        index: usize,
        text: String,
    },
}

/// Streams a reply with tools as OpenAI does: content as it comes; each `<tool_call>` as a first
/// delta with id and name once the name is written, then its arguments in pieces as they are
/// generated. The pieces of a call concatenate to the arguments the non-streamed reply carries.
pub struct ToolCallStreamer {
    split: ToolCallSplitter,
    /// Calls started so far: id, name and how much of the arguments was sent.
    started: Vec<(String, String, usize)>,
}

impl ToolCallStreamer {
    pub fn new(tool_names: Vec<String>) -> Self {
        Self {
            split: ToolCallSplitter::new(tool_names),
            started: Vec::new(),
        }
    }

    fn calls_so_far(&self) -> Vec<Option<PartialCall>> {
        let held = &self.split.held;
        let mut out = Vec::new();
        let mut rest = held.as_str();
        while let Some(start) = rest.find(OPEN) {
            let body = &rest[start + OPEN.len()..];
            let (inner, next) = match body.find(CLOSE) {
                Some(end) => (&body[..end], &body[end + CLOSE.len()..]),
                None => (body, ""),
            };
            out.push(partial_call(inner));
            rest = next;
        }
        out
    }

    /// Deltas for the calls' progress since the last call.
    fn progress(&mut self, out: &mut Vec<StreamPiece>) {
        if !self.split.in_calls {
            return;
        }
        for (index, call) in self.calls_so_far().into_iter().enumerate() {
            let Some(call) = call else {
                // Not streamable (yet): later calls wait for it, so indexes stay in order.
                break;
            };
            if index == self.started.len() {
                let id = new_call_id();
                out.push(StreamPiece::CallStart {
                    index,
                    id: id.clone(),
                    name: call.name.clone(),
                });
                self.started.push((id, call.name.clone(), 0));
            }
            if let Some((_, _, sent)) = self.started.get_mut(index) {
                if call.args.len() > *sent && call.args.is_char_boundary(*sent) {
                    out.push(StreamPiece::CallArgs {
                        index,
                        text: call.args[*sent..].to_string(),
                    });
                    *sent = call.args.len();
                }
            }
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<StreamPiece> {
        let mut out = Vec::new();
        let content = self.split.push(text);
        if !content.is_empty() {
            out.push(StreamPiece::Content(content));
        }
        self.progress(&mut out);
        out
    }

    /// The end of the reply: what is still held, and every call not yet (fully) sent. Whether any
    /// call was made is the second value.
    pub fn finish(mut self) -> (Vec<StreamPiece>, bool) {
        let mut out = Vec::new();
        self.progress(&mut out);
        let started = std::mem::take(&mut self.started);
        let (rest, calls) = self.split.finish();
        if !rest.is_empty() {
            out.push(StreamPiece::Content(rest));
        }
        let any = !calls.is_empty() || !started.is_empty();
        for (index, call) in calls.into_iter().enumerate() {
            match started.get(index) {
                Some((_, _, sent)) => {
                    if call.arguments.len() > *sent && call.arguments.is_char_boundary(*sent) {
                        out.push(StreamPiece::CallArgs {
                            index,
                            text: call.arguments[*sent..].to_string(),
                        });
                    }
                }
                None => {
                    out.push(StreamPiece::CallStart {
                        index,
                        id: call.id,
                        name: call.name,
                    });
                    out.push(StreamPiece::CallArgs {
                        index,
                        text: call.arguments,
                    });
                }
            }
        }
        (out, any)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pieces: &[&str]) -> (String, String, Vec<ToolCall>) {
        let mut s = ToolCallSplitter::new(vec!["weather".into(), "time".into()]);
        let streamed: String = pieces.iter().map(|p| s.push(p)).collect();
        let (rest, calls) = s.finish();
        (streamed, rest, calls)
    }

    #[test]
    fn content_passes_and_calls_split_across_pieces_are_parsed() {
        let (streamed, rest, calls) = run(&[
            "Let me check.",
            "\n<tool",
            "_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Berlin\"}}\n</tool_call>",
            "\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>",
        ]);
        assert_eq!(streamed, "Let me check.\n");
        assert_eq!(rest, "");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name, "weather");
        assert_eq!(
            calls[0].arguments, r#"{"city": "Berlin"}"#,
            "arguments as written"
        );
        assert_eq!(calls[1].name, "time");
        assert_ne!(calls[0].id, calls[1].id);
    }

    #[test]
    fn a_whole_reply_that_is_a_json_call_to_a_declared_tool_is_a_call() {
        for reply in [
            "{\"name\": \"weather\", \"arguments\": {\"city\": \"Bonn\"}}",
            "```json\n{\n  \"name\": \"weather\",\n  \"arguments\": {\"city\": \"Bonn\"}\n}\n```",
        ] {
            let pieces: Vec<String> = reply.chars().map(String::from).collect();
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let (streamed, rest, calls) = run(&refs);
            assert_eq!((streamed.as_str(), rest.as_str()), ("", ""), "{reply}");
            assert_eq!(calls.len(), 1, "{reply}");
            let args: Value = serde_json::from_str(&calls[0].arguments).unwrap();
            assert_eq!(args, json!({"city": "Bonn"}));
        }
        // Undeclared names, other JSON and text after the object stay content.
        for reply in [
            "{\"name\": \"launch\", \"arguments\": {}}",
            "{\"a\": 1}",
            "```python\nprint(1)\n```",
        ] {
            let (streamed, rest, calls) = run(&[reply]);
            assert_eq!(format!("{streamed}{rest}"), reply);
            assert!(calls.is_empty(), "{reply}");
        }
    }

    #[test]
    fn plain_text_and_broken_calls_stay_content() {
        let (streamed, rest, calls) = run(&["a < b and <tool", "box> too"]);
        assert_eq!(format!("{streamed}{rest}"), "a < b and <toolbox> too");
        assert!(calls.is_empty());
        let (streamed, rest, calls) = run(&["<tool_call>{not json</tool_call>"]);
        assert_eq!(
            format!("{streamed}{rest}"),
            "<tool_call>{not json</tool_call>"
        );
        assert!(calls.is_empty());
    }

    /// Streams `reply` in pieces of `step` characters; returns the content, each call's
    /// (id, name, concatenated arguments), and whether a call was made.
    fn stream(reply: &str, step: usize) -> (String, Vec<(String, String, String)>, bool) {
        let mut st = ToolCallStreamer::new(vec!["weather".into(), "time".into()]);
        let chars: Vec<char> = reply.chars().collect();
        let mut pieces = Vec::new();
        for c in chars.chunks(step) {
            pieces.extend(st.push(&c.iter().collect::<String>()));
        }
        let (rest, called) = st.finish();
        pieces.extend(rest);
        let (mut content, mut calls) = (String::new(), Vec::<(String, String, String)>::new());
        let mut arg_pieces = 0;
        for p in pieces {
            match p {
                StreamPiece::Content(t) => content.push_str(&t),
                StreamPiece::CallStart { index, id, name } => {
                    assert_eq!(index, calls.len(), "calls start in order");
                    calls.push((id, name, String::new()));
                }
                StreamPiece::CallArgs { index, text } => {
                    calls[index].2.push_str(&text);
                    arg_pieces += 1;
                }
            }
        }
        if step == 1 && !calls.is_empty() {
            assert!(
                arg_pieces > calls.len(),
                "arguments come in pieces, not whole"
            );
        }
        (content, calls, called)
    }

    #[test]
    fn streamed_calls_concatenate_to_the_non_streamed_ones() {
        let reply = "Sure.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Bonn \\\"Zentrum\\\" {x}\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>";
        let (want_content, want_calls) = {
            let mut s = ToolCallSplitter::new(vec!["weather".into(), "time".into()]);
            let mut c = s.push(reply);
            let (rest, calls) = s.finish();
            c.push_str(&rest);
            (c, calls)
        };
        assert_eq!(want_calls.len(), 2);
        for step in [1, 2, 3, 7, 1000] {
            let (content, calls, called) = stream(reply, step);
            assert!(called);
            assert_eq!(content, want_content, "step {step}");
            let got: Vec<(&str, &str)> =
                calls.iter().map(|c| (c.1.as_str(), c.2.as_str())).collect();
            let want: Vec<(&str, &str)> = want_calls
                .iter()
                .map(|c| (c.name.as_str(), c.arguments.as_str()))
                .collect();
            assert_eq!(got, want, "step {step}");
            assert!(calls.iter().all(|c| c.0.starts_with("call_")));
        }
    }

    #[test]
    fn text_after_a_call_is_kept_and_plain_replies_stream_as_content() {
        let (content, calls, called) = stream(
            "<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>\nI asked for the time.",
            4,
        );
        assert!(called);
        assert_eq!(calls.len(), 1);
        assert_eq!(content, "I asked for the time.");
        let (content, calls, called) = stream("Just text, no <b>calls</b>.", 3);
        assert!(!called && calls.is_empty());
        assert_eq!(content, "Just text, no <b>calls</b>.");
    }
}
