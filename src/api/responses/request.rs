//! A Responses API request, translated for the shared chat path: `input` items (messages with text
//! parts, `function_call`, `function_call_output`) and `instructions` become chat messages,
//! function tools and `tool_choice` their chat forms, `text.format` a `response_format`, and the
//! sampling fields their chat names. Built-in tools (web search, file search, ...) are refused.
use crate::api::errors::ApiError;
use crate::api::generation::new_id;
use serde_json::{json, Map, Value};

fn bad(msg: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::invalid(msg, Some(param))
}

/// The parts of a request that are not the conversation, checked.
pub struct ResponsesRequest {
    /// A chat completions body without `messages`.
    pub chat: Map<String, Value>,
    /// This request's input as items, each with an id.
    pub input_items: Vec<Value>,
    pub instructions: Option<String>,
    pub previous_response_id: Option<String>,
    pub store: bool,
    pub stream: bool,
    /// `truncation: "auto"`: drop the oldest turns when the conversation is too long.
    pub truncate: bool,
    /// Fields the response object echoes (tools, tool_choice, text, temperature, ...).
    pub echo: Map<String, Value>,
}

fn opt_str(body: &Value, key: &'static str) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("{key} must be a string."), key)),
    }
}

fn opt_bool(body: &Value, key: &'static str) -> Result<Option<bool>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad(format!("{key} must be true or false."), key)),
    }
}

/// Checks the request body and splits it into what the chat path and the response need.
pub fn parse(body: &Value) -> Result<ResponsesRequest, ApiError> {
    if !body.is_object() {
        return Err(bad("The request body must be a JSON object.", "input"));
    }
    let model = opt_str(body, "model")?.ok_or_else(|| bad("model is required.", "model"))?;
    for (key, what) in [
        ("background", "Background responses are"),
        ("conversation", "Conversations are"),
        ("prompt", "Stored prompt templates are"),
    ] {
        if body
            .get(key)
            .is_some_and(|v| !v.is_null() && v != &json!(false))
        {
            return Err(bad(format!("{what} not supported by this server."), key));
        }
    }
    let mut chat = Map::new();
    chat.insert("model".into(), json!(model));
    let mut echo = Map::new();
    if let Some(m) = body.get("max_output_tokens").filter(|v| !v.is_null()) {
        chat.insert("max_tokens".into(), m.clone());
        echo.insert("max_output_tokens".into(), m.clone());
    }
    for key in ["temperature", "top_p", "seed", "top_k", "min_p"] {
        if let Some(v) = body.get(key).filter(|v| !v.is_null()) {
            chat.insert(key.into(), v.clone());
        }
    }
    echo.insert(
        "temperature".into(),
        body.get("temperature").cloned().unwrap_or(json!(1.0)),
    );
    echo.insert(
        "top_p".into(),
        body.get("top_p").cloned().unwrap_or(json!(1.0)),
    );
    let stream = opt_bool(body, "stream")?.unwrap_or(false);
    chat.insert("stream".into(), json!(false)); // the events are shaped here, not by chat
    let parallel = opt_bool(body, "parallel_tool_calls")?.unwrap_or(true);
    chat.insert("parallel_tool_calls".into(), json!(parallel));
    echo.insert("parallel_tool_calls".into(), json!(parallel));
    let tools = tools(body.get("tools"))?;
    // Echoed as OpenAI does: every field of a function tool present (`strict` defaults to true;
    // calls are constrained to the parameters' schema either way).
    let echoed: Vec<Value> = tools
        .iter()
        .map(|t| {
            let f = &t["function"];
            let strict = body
                .get("tools")
                .and_then(|l| l.as_array())
                .and_then(|l| l.iter().find(|o| o.get("name") == f.get("name")))
                .and_then(|o| o.get("strict"))
                .and_then(Value::as_bool)
                .unwrap_or(true);
            json!({
                "type": "function", "name": f["name"], "description": f.get("description"),
                "parameters": f.get("parameters"), "strict": strict,
            })
        })
        .collect();
    echo.insert("tools".into(), Value::Array(echoed));
    if !tools.is_empty() {
        chat.insert("tools".into(), Value::Array(tools));
    }
    let choice = body.get("tool_choice").filter(|c| !c.is_null());
    if let Some(c) = choice {
        chat.insert("tool_choice".into(), tool_choice(c)?);
    }
    echo.insert(
        "tool_choice".into(),
        choice.cloned().unwrap_or(json!("auto")),
    );
    let format = body.pointer("/text/format").filter(|f| !f.is_null());
    if let Some(f) = format {
        chat.insert("response_format".into(), response_format(f)?);
    }
    echo.insert(
        "text".into(),
        json!({ "format": format.cloned().unwrap_or(json!({"type": "text"})) }),
    );
    let truncate = match opt_str(body, "truncation")?.as_deref() {
        None | Some("disabled") => false,
        Some("auto") => true,
        Some(other) => {
            return Err(bad(
                format!("truncation must be `auto` or `disabled`; got `{other}`."),
                "truncation",
            ))
        }
    };
    echo.insert(
        "truncation".into(),
        json!(if truncate { "auto" } else { "disabled" }),
    );
    match body.get("metadata") {
        None | Some(Value::Null) => {
            echo.insert("metadata".into(), json!({}));
        }
        Some(m @ Value::Object(o))
            if o.len() <= 16
                && o.values()
                    .all(|v| v.as_str().is_some_and(|s| s.len() <= 512)) =>
        {
            echo.insert("metadata".into(), m.clone());
        }
        Some(_) => {
            return Err(bad(
                "metadata must be an object of at most 16 string values (512 characters each).",
                "metadata",
            ))
        }
    }
    // Accepted and without effect for models that do not reason.
    echo.insert(
        "reasoning".into(),
        json!({ "effort": body.pointer("/reasoning/effort").cloned().unwrap_or(Value::Null), "summary": null }),
    );
    let instructions = opt_str(body, "instructions")?;
    echo.insert("instructions".into(), json!(instructions));
    let store = opt_bool(body, "store")?.unwrap_or(true);
    let previous_response_id = opt_str(body, "previous_response_id")?;
    let input_items = input_items(body.get("input"))?;
    Ok(ResponsesRequest {
        chat,
        input_items,
        instructions,
        previous_response_id,
        store,
        stream,
        truncate,
        echo,
    })
}

/// Function tools in the chat form; any other tool type is a 400.
fn tools(tools: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(l)) => l,
        Some(_) => return Err(bad("tools must be a list.", "tools")),
    };
    list.iter()
        .enumerate()
        .map(|(i, t)| match t.get("type").and_then(Value::as_str) {
            Some("function") => {
                let mut f = Map::new();
                for key in ["name", "description", "parameters"] {
                    if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                        f.insert(key.into(), v.clone());
                    }
                }
                Ok(json!({ "type": "function", "function": f }))
            }
            Some(other) => Err(bad(
                format!("tools[{i}]: the built-in tool `{other}` is not available on this server; only function tools are."),
                "tools",
            )),
            None => Err(bad(format!("tools[{i}] needs a type."), "tools")),
        })
        .collect()
}

fn tool_choice(c: &Value) -> Result<Value, ApiError> {
    match c {
        Value::String(_) => Ok(c.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").and_then(Value::as_str).ok_or_else(|| {
                bad("tool_choice of type function needs a name.", "tool_choice")
            })?;
            Ok(json!({ "type": "function", "function": { "name": name } }))
        }
        _ => Err(bad(
            "tool_choice must be none, auto, required or {\"type\": \"function\", \"name\": ...}; built-in tools are not available on this server.",
            "tool_choice",
        )),
    }
}

fn response_format(f: &Value) -> Result<Value, ApiError> {
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({ "type": "text" })),
        Some("json_object") => Ok(json!({ "type": "json_object" })),
        Some("json_schema") => {
            let mut js = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = f.get(key).filter(|v| !v.is_null()) {
                    js.insert(key.into(), v.clone());
                }
            }
            Ok(json!({ "type": "json_schema", "json_schema": js }))
        }
        _ => Err(bad(
            "text.format must have type text, json_object or json_schema.",
            "text.format",
        )),
    }
}

/// The request's `input` as items with ids: a string is one user message.
fn input_items(input: Option<&Value>) -> Result<Vec<Value>, ApiError> {
    let mut items = match input {
        Some(Value::String(s)) => vec![json!({
            "type": "message", "role": "user",
            "content": [{ "type": "input_text", "text": s }],
        })],
        Some(Value::Array(list)) if !list.is_empty() => list.clone(),
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(bad(
                "input must be a string or a non-empty list of items.",
                "input",
            ))
        }
        Some(_) => return Err(bad("input must be a string or a list of items.", "input")),
    };
    for (i, item) in items.iter_mut().enumerate() {
        let Some(obj) = item.as_object_mut() else {
            return Err(bad(format!("input[{i}] must be an object."), "input"));
        };
        let kind = match obj.get("type").and_then(Value::as_str) {
            Some(k) => k.to_string(),
            None if obj.contains_key("role") => "message".to_string(),
            None => return Err(bad(format!("input[{i}] needs a type."), "input")),
        };
        obj.insert("type".into(), json!(kind));
        if kind == "message" {
            if let Some(Value::String(s)) = obj.get("content") {
                let part = if obj.get("role").and_then(Value::as_str) == Some("assistant") {
                    json!({ "type": "output_text", "text": s, "annotations": [] })
                } else {
                    json!({ "type": "input_text", "text": s })
                };
                obj.insert("content".into(), json!([part]));
            }
        }
        if matches!(kind.as_str(), "function_call" | "function_call_output")
            && !obj.contains_key("status")
        {
            obj.insert("status".into(), json!("completed"));
        }
        if !obj.get("id").is_some_and(Value::is_string) {
            let prefix = match kind.as_str() {
                "message" => "msg_",
                "function_call" => "fc_",
                "function_call_output" => "fco_",
                _ => "item_",
            };
            obj.insert("id".into(), json!(new_id(prefix)));
        }
    }
    Ok(items)
}

fn text_of_parts(content: &Value, i: usize) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        text.push_str(p.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    Some("refusal") => {
                        text.push_str(p.get("refusal").and_then(Value::as_str).unwrap_or(""))
                    }
                    Some(other) => {
                        return Err(bad(
                            format!(
                            "input[{i}]: content of type `{other}` is not supported by this model."
                        ),
                            "input",
                        ))
                    }
                    None => {
                        return Err(bad(
                            format!("input[{i}]: each content part needs a type."),
                            "input",
                        ))
                    }
                }
            }
            Ok(text)
        }
        Value::Null => Ok(String::new()),
        _ => Err(bad(
            format!("input[{i}]: content must be a string or a list of parts."),
            "input",
        )),
    }
}

/// The conversation as chat messages: `instructions` first, then the items in order. Consecutive
/// function calls join one assistant turn; a call's output becomes a tool message.
pub fn chat_messages(instructions: Option<&str>, items: &[Value]) -> Result<Vec<Value>, ApiError> {
    let mut msgs: Vec<Value> = Vec::new();
    if let Some(s) = instructions {
        msgs.push(json!({ "role": "system", "content": s }));
    }
    let mut names: Vec<(String, String)> = Vec::new(); // call_id -> function name
    for (i, item) in items.iter().enumerate() {
        let field = |k: &str| item.get(k).and_then(Value::as_str);
        match field("type").unwrap_or("message") {
            "message" => {
                let role = field("role").unwrap_or("");
                if !matches!(role, "user" | "system" | "developer" | "assistant") {
                    return Err(bad(
                        format!("input[{i}]: role must be user, system, developer or assistant."),
                        "input",
                    ));
                }
                let text = text_of_parts(item.get("content").unwrap_or(&Value::Null), i)?;
                msgs.push(json!({ "role": role, "content": text }));
            }
            "function_call" => {
                let (Some(call_id), Some(name)) = (field("call_id"), field("name")) else {
                    return Err(bad(
                        format!("input[{i}]: a function_call needs call_id and name."),
                        "input",
                    ));
                };
                let call = json!({
                    "id": call_id, "type": "function",
                    "function": { "name": name, "arguments": field("arguments").unwrap_or("{}") },
                });
                names.push((call_id.to_string(), name.to_string()));
                let joins = msgs.last().is_some_and(|m| {
                    m["role"] == "assistant"
                        && (m.get("tool_calls").is_some() || m["content"] != "")
                });
                match msgs.last_mut() {
                    Some(m) if joins => match m.get_mut("tool_calls").and_then(Value::as_array_mut)
                    {
                        Some(calls) => calls.push(call),
                        None => {
                            m["tool_calls"] = json!([call]);
                        }
                    },
                    _ => msgs.push(
                        json!({ "role": "assistant", "content": null, "tool_calls": [call] }),
                    ),
                }
            }
            "function_call_output" => {
                let Some(call_id) = field("call_id") else {
                    return Err(bad(
                        format!("input[{i}]: a function_call_output needs call_id."),
                        "input",
                    ));
                };
                let output = text_of_parts(item.get("output").unwrap_or(&Value::Null), i)?;
                let mut m = json!({ "role": "tool", "tool_call_id": call_id, "content": output });
                if let Some((_, name)) = names.iter().find(|(id, _)| id == call_id) {
                    m["name"] = json!(name);
                }
                msgs.push(m);
            }
            "reasoning" => {} // models here do not reason; their summaries are not replayed
            other => {
                return Err(bad(
                    format!(
                        "input[{i}]: items of type `{other}` are not supported by this server."
                    ),
                    "input",
                ))
            }
        }
    }
    Ok(msgs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_round_trip_becomes_the_chat_messages_of_the_same_conversation() {
        let req = parse(&json!({
            "model": "m", "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": "Weather in Berlin?"},
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\": \"Berlin\"}"},
                {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{\"city\": \"Bonn\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": "12 C"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "9 C"}]},
            ],
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
            "max_output_tokens": 7,
        }))
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert!(req.input_items.iter().all(|i| i["id"].is_string()));
        let msgs = chat_messages(req.instructions.as_deref(), &req.input_items)
            .unwrap_or_else(|e| panic!("{}", e.message));
        let want = json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Berlin?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Berlin\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Bonn\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "12 C", "name": "get_weather"},
            {"role": "tool", "tool_call_id": "c2", "content": "9 C", "name": "get_weather"},
        ]);
        assert_eq!(Value::Array(msgs), want);
        assert_eq!(req.chat["max_tokens"], 7);
        assert_eq!(
            req.chat["tool_choice"],
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
        assert_eq!(req.chat["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(req.chat["response_format"]["json_schema"]["name"], "w");
    }

    #[test]
    fn built_in_tools_and_unknown_items_are_400s_naming_the_field() {
        let cases = [
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools",
            ),
            (json!({"model": "m", "input": []}), "input"),
            (
                json!({"model": "m", "input": [{"type": "computer_call"}]}),
                "input",
            ),
            (
                json!({"model": "m", "input": "x", "truncation": "sometimes"}),
                "truncation",
            ),
            (
                json!({"model": "m", "input": "x", "background": true}),
                "background",
            ),
            (json!({"input": "x"}), "model"),
        ];
        for (body, param) in cases {
            let err = match parse(&body) {
                Ok(r) => match chat_messages(None, &r.input_items) {
                    Ok(_) => panic!("{body} was accepted"),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            assert_eq!(err.status, 400, "{body}");
            assert_eq!(err.param, Some(param), "{body}: {}", err.message);
        }
    }
}
