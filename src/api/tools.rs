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
        let mut rest = self.held.as_str();
        while let Some(start) = rest.find(OPEN) {
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
        if calls.is_empty() {
            (self.held, calls)
        } else {
            (String::new(), calls)
        }
    }
}

fn parse_call(inner: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(inner.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "{}".into(),
    };
    Some(ToolCall {
        id: format!("call_{:016x}", rand::random::<u64>()),
        name,
        arguments,
    })
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
        assert_eq!(calls[0].arguments, r#"{"city":"Berlin"}"#);
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
            assert_eq!(calls[0].arguments, r#"{"city":"Bonn"}"#);
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
}
