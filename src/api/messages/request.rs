//! An Anthropic Messages request, translated for the shared chat path: `system` (a string or text
//! blocks) and `messages` with `text`, `tool_use` and `tool_result` blocks become chat messages;
//! `tools` with `input_schema` become function tools; `tool_choice` (`auto`, `any`, `tool`, `none`)
//! its chat form; `max_tokens` (required), `stop_sequences`, `temperature`, `top_p` and `top_k`
//! their chat names. Anthropic's server tools (web search, code execution, ...) are refused.
use crate::api::errors::ApiError;
use serde_json::{json, Map, Value};

fn bad(msg: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::invalid(msg, Some(param))
}

/// A chat completions body (as JSON) for a Messages request. `count_only`: for `count_tokens`,
/// where `max_tokens` is not given.
pub fn chat_body(body: &Value, count_only: bool) -> Result<Map<String, Value>, ApiError> {
    if !body.is_object() {
        return Err(bad("The request body must be a JSON object.", "messages"));
    }
    let mut chat = Map::new();
    match body.get("model") {
        Some(Value::String(m)) => chat.insert("model".into(), json!(m)),
        _ => return Err(bad("model: Field required (a string).", "model")),
    };
    if !count_only {
        match body.get("max_tokens") {
            Some(m) if m.is_u64() || m.is_i64() => chat.insert("max_tokens".into(), m.clone()),
            Some(_) => return Err(bad("max_tokens: must be an integer.", "max_tokens")),
            None => return Err(bad("max_tokens: Field required", "max_tokens")),
        };
    }
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(v) = body.get(key).filter(|v| !v.is_null()) {
            chat.insert(key.into(), v.clone());
        }
    }
    match body.get("stop_sequences") {
        None | Some(Value::Null) => {}
        Some(Value::Array(list)) if list.is_empty() => {}
        Some(v @ Value::Array(_)) => {
            chat.insert("stop".into(), v.clone());
        }
        Some(_) => {
            return Err(bad(
                "stop_sequences: must be a list of strings.",
                "stop_sequences",
            ))
        }
    }
    chat.insert("stream".into(), json!(false)); // the events are shaped here, not by chat
    let tools = tools(body.get("tools"))?;
    let mut parallel = true;
    if let Some(c) = body.get("tool_choice").filter(|c| !c.is_null()) {
        let (choice, par) = tool_choice(c)?;
        chat.insert("tool_choice".into(), choice);
        parallel = par;
    }
    if !tools.is_empty() {
        chat.insert("tools".into(), Value::Array(tools));
        chat.insert("parallel_tool_calls".into(), json!(parallel));
    }
    chat.insert("messages".into(), Value::Array(messages(body)?));
    Ok(chat)
}

fn tools(tools: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(l)) => l,
        Some(_) => return Err(bad("tools: must be a list.", "tools")),
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            match t.get("type").and_then(Value::as_str) {
                None | Some("custom") => {}
                Some(other) => {
                    return Err(bad(
                        format!("tools.{i}: the server tool `{other}` is not available on this server; only client tools with an input_schema are."),
                        "tools",
                    ))
                }
            }
            let mut f = Map::new();
            match t.get("name") {
                Some(n @ Value::String(_)) => f.insert("name".into(), n.clone()),
                _ => return Err(bad(format!("tools.{i}.name: Field required"), "tools")),
            };
            if let Some(d) = t.get("description").filter(|d| !d.is_null()) {
                f.insert("description".into(), d.clone());
            }
            match t.get("input_schema") {
                Some(s @ Value::Object(_)) => f.insert("parameters".into(), s.clone()),
                _ => {
                    return Err(bad(
                        format!("tools.{i}.input_schema: Field required (a JSON schema object)"),
                        "tools",
                    ))
                }
            };
            Ok(json!({ "type": "function", "function": f }))
        })
        .collect()
}

/// The chat `tool_choice`, and whether parallel calls are allowed.
fn tool_choice(c: &Value) -> Result<(Value, bool), ApiError> {
    let parallel = c.get("disable_parallel_tool_use") != Some(&json!(true));
    let choice = match c.get("type").and_then(Value::as_str) {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match c.get("name").and_then(Value::as_str) {
            Some(name) => json!({ "type": "function", "function": { "name": name } }),
            None => return Err(bad("tool_choice.name: Field required", "tool_choice")),
        },
        _ => {
            return Err(bad(
                "tool_choice.type: must be auto, any, tool or none.",
                "tool_choice",
            ))
        }
    };
    Ok((choice, parallel))
}

fn text_blocks(v: &Value, what: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut text = String::new();
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some(other) => {
                        return Err(bad(
                            format!("{what}: content blocks of type `{other}` are not supported by this model."),
                            "messages",
                        ))
                    }
                    None => return Err(bad(format!("{what}: each block needs a type."), "messages")),
                }
            }
            Ok(text)
        }
        _ => Err(bad(
            format!("{what}: must be a string or a list of blocks."),
            "messages",
        )),
    }
}

/// The conversation as chat messages.
fn messages(body: &Value) -> Result<Vec<Value>, ApiError> {
    let mut out: Vec<Value> = Vec::new();
    if let Some(s) = body.get("system").filter(|s| !s.is_null()) {
        out.push(json!({ "role": "system", "content": text_blocks(s, "system")? }));
    }
    let list = match body.get("messages") {
        Some(Value::Array(l)) if !l.is_empty() => l,
        Some(Value::Array(_)) => {
            return Err(bad(
                "messages: at least one message is required.",
                "messages",
            ))
        }
        _ => return Err(bad("messages: Field required (a list).", "messages")),
    };
    let mut names: Vec<(String, String)> = Vec::new(); // tool_use id -> name
    for (i, m) in list.iter().enumerate() {
        let what = format!("messages.{i}");
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if !matches!(role, "user" | "assistant") {
            return Err(bad(
                format!("{what}.role: must be user or assistant."),
                "messages",
            ));
        }
        let blocks = match m.get("content") {
            Some(Value::String(s)) => {
                out.push(json!({ "role": role, "content": s }));
                continue;
            }
            Some(Value::Array(b)) => b,
            _ => {
                return Err(bad(
                    format!("{what}.content: Field required (a string or a list of blocks)."),
                    "messages",
                ))
            }
        };
        let mut text = String::new();
        let mut calls: Vec<Value> = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let field = |k: &str| b.get(k).and_then(Value::as_str);
            match (role, field("type")) {
                (_, Some("text")) => text.push_str(field("text").unwrap_or("")),
                ("assistant", Some("tool_use")) => {
                    let (Some(id), Some(name)) = (field("id"), field("name")) else {
                        return Err(bad(format!("{what}.content.{j}: a tool_use block needs id and name."), "messages"));
                    };
                    let input = b.get("input").cloned().unwrap_or(json!({}));
                    names.push((id.to_string(), name.to_string()));
                    calls.push(json!({
                        "id": id, "type": "function",
                        "function": { "name": name, "arguments": input.to_string() },
                    }));
                }
                ("user", Some("tool_result")) => {
                    let Some(id) = field("tool_use_id") else {
                        return Err(bad(format!("{what}.content.{j}: a tool_result block needs tool_use_id."), "messages"));
                    };
                    let mut content = match b.get("content") {
                        None | Some(Value::Null) => String::new(),
                        Some(c) => text_blocks(c, &format!("{what}.content.{j}.content"))?,
                    };
                    if b.get("is_error") == Some(&json!(true)) {
                        content = format!("Error: {content}");
                    }
                    let mut t = json!({ "role": "tool", "tool_call_id": id, "content": content });
                    if let Some((_, name)) = names.iter().find(|(k, _)| k == id) {
                        t["name"] = json!(name);
                    }
                    out.push(t);
                }
                (_, Some("thinking" | "redacted_thinking")) => {} // not replayed to this model
                (_, Some(other)) => {
                    return Err(bad(
                        format!("{what}.content.{j}: blocks of type `{other}` are not supported in {role} messages by this server."),
                        "messages",
                    ))
                }
                (_, None) => return Err(bad(format!("{what}.content.{j}.type: Field required"), "messages")),
            }
        }
        if role == "assistant" {
            let mut a = json!({ "role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) } });
            if !calls.is_empty() {
                a["tool_calls"] = Value::Array(calls);
            }
            out.push(a);
        } else if !text.is_empty() || !blocks.iter().any(|b| b["type"] == "tool_result") {
            out.push(json!({ "role": "user", "content": text }));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_round_trip_becomes_the_chat_messages_of_the_same_conversation() {
        let chat = chat_body(
            &json!({
                "model": "m", "max_tokens": 9, "system": [{"type": "text", "text": "Be brief."}],
                "stop_sequences": ["END"], "top_k": 5,
                "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "messages": [
                    {"role": "user", "content": "Weather in Berlin?"},
                    {"role": "assistant", "content": [
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Berlin"}},
                    ]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "12 C"}]},
                        {"type": "text", "text": "And tomorrow?"},
                    ]},
                ],
            }),
            false,
        )
        .unwrap_or_else(|e| panic!("{}", e.message));
        let want = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Berlin?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Berlin\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "12 C", "name": "get_weather"},
            {"role": "user", "content": "And tomorrow?"},
        ]);
        assert_eq!(chat["messages"], want);
        assert_eq!(chat["max_tokens"], 9);
        assert_eq!(chat["stop"], json!(["END"]));
        assert_eq!(chat["top_k"], 5);
        assert_eq!(chat["tool_choice"], "required");
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(
            chat["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
    }

    #[test]
    fn missing_max_tokens_server_tools_and_images_are_400s() {
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            json!({"model": "m", "messages": msgs}),
            json!({"model": "m", "max_tokens": 5, "messages": msgs, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}),
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
            json!({"model": "m", "max_tokens": 5, "messages": []}),
        ];
        for body in cases {
            match chat_body(&body, false) {
                Ok(_) => panic!("{body} was accepted"),
                Err(e) => assert_eq!(e.status, 400, "{body}"),
            }
        }
        assert!(chat_body(&json!({"model": "m", "messages": msgs}), true).is_ok());
    }
}
