//! The Responses API's answers: the `response` object with its `output` items (`message` with
//! `output_text`, `function_call` with `call_id`), and the typed stream events in OpenAI's order
//! (`response.created`, `response.in_progress`, per item `response.output_item.added`, its content
//! or arguments deltas and `.done` events, then `response.completed` / `response.incomplete` /
//! `response.failed`), each with a `sequence_number`.
use crate::api::errors::ApiError;
use crate::api::generation::new_id;
use crate::api::reply::{Finish, ReplyEvent, ReplyItem};
use serde_json::{json, Map, Value};

/// What every form of the response object carries.
#[derive(Clone)]
pub struct Shell {
    pub id: String,
    pub created_at: u64,
    pub model: String,
    pub previous_response_id: Option<String>,
    pub store: bool,
    /// Request fields echoed back (tools, tool_choice, text, temperature, ...).
    pub echo: Map<String, Value>,
    pub prompt_tokens: usize,
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "input_tokens": prompt,
        "input_tokens_details": { "cached_tokens": 0, "cache_write_tokens": 0 },
        "output_tokens": completion,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": prompt + completion,
    })
}

impl Shell {
    /// The response object in a given state.
    pub fn object(
        &self,
        status: &str,
        output: &[Value],
        completion_tokens: Option<usize>,
        finish: Option<&Finish>,
        error: Option<&ApiError>,
    ) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "error": error.map(|e| json!({ "code": e.code.unwrap_or("server_error"), "message": e.message })),
            "incomplete_details": match finish {
                Some(Finish::Length) => json!({ "reason": "max_output_tokens" }),
                _ => Value::Null,
            },
            "max_output_tokens": null,
            "max_tool_calls": null,
            "model": self.model,
            "output": output,
            "previous_response_id": self.previous_response_id,
            "service_tier": "default",
            "store": self.store,
            "top_logprobs": 0,
        });
        if let Some(obj) = v.as_object_mut() {
            // No `usage` until there is one (the spec has no null usage).
            if let Some(c) = completion_tokens {
                obj.insert("usage".into(), usage(self.prompt_tokens, c));
            }
            for (k, val) in &self.echo {
                obj.insert(k.clone(), val.clone());
            }
        }
        v
    }

    /// The final status for how the reply ended.
    pub fn status(finish: &Finish) -> &'static str {
        match finish {
            Finish::Length => "incomplete",
            _ => "completed",
        }
    }
}

fn text_part(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] })
}

fn message_item(id: &str, status: &str, text: Option<&str>) -> Value {
    json!({
        "type": "message", "id": id, "status": status, "role": "assistant",
        "content": text.map(|t| vec![text_part(t)]).unwrap_or_default(),
    })
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": arguments, "status": status,
    })
}

/// The output items of a whole reply.
pub fn output_items(items: &[ReplyItem], finish: &Finish) -> Vec<Value> {
    let status = if *finish == Finish::Length {
        "incomplete"
    } else {
        "completed"
    };
    items
        .iter()
        .map(|i| match i {
            ReplyItem::Text(t) => message_item(&new_id("msg_"), status, Some(t)),
            ReplyItem::Call {
                id,
                name,
                arguments,
            } => call_item(&new_id("fc_"), id, name, arguments, "completed"),
        })
        .collect()
}

/// The item being streamed.
enum Open {
    None,
    Text {
        index: usize,
        id: String,
        text: String,
    },
    Call {
        index: usize,
    },
}

/// Turns reply events into the stream's events, keeping the output items for the final response.
pub struct EventWriter {
    seq: u64,
    open: Open,
    /// Output items so far (those still open with what they have).
    pub output: Vec<Value>,
    /// For each call: its output index.
    calls: Vec<usize>,
}

impl Default for EventWriter {
    fn default() -> Self {
        Self {
            seq: 0,
            open: Open::None,
            output: Vec::new(),
            calls: Vec::new(),
        }
    }
}

impl EventWriter {
    /// One event: its type and payload, numbered.
    pub fn event(&mut self, kind: &str, payload: Value) -> (String, Value) {
        let mut v = json!({ "type": kind, "sequence_number": self.seq });
        self.seq += 1;
        if let (Some(obj), Value::Object(p)) = (v.as_object_mut(), payload) {
            obj.extend(p);
        }
        (kind.to_string(), v)
    }

    fn close(&mut self, out: &mut Vec<(String, Value)>) {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Text { index, id, text } => {
                let common = json!({ "item_id": id, "output_index": index, "content_index": 0 });
                let mut done = common.clone();
                done["text"] = json!(text);
                done["logprobs"] = json!([]);
                out.push(self.event("response.output_text.done", done));
                let mut part = common;
                part["part"] = text_part(&text);
                out.push(self.event("response.content_part.done", part));
                let item = message_item(&id, "completed", Some(&text));
                self.output[index] = item.clone();
                out.push(self.event(
                    "response.output_item.done",
                    json!({ "output_index": index, "item": item }),
                ));
            }
            Open::Call { index, .. } => {
                let mut item = self.output[index].clone();
                item["status"] = json!("completed");
                self.output[index] = item.clone();
                out.push(self.event(
                    "response.function_call_arguments.done",
                    json!({
                        "item_id": item["id"], "output_index": index,
                        "name": item["name"], "arguments": item["arguments"],
                    }),
                ));
                out.push(self.event(
                    "response.output_item.done",
                    json!({ "output_index": index, "item": item }),
                ));
            }
        }
    }

    /// The stream events for one reply event.
    pub fn reply_event(&mut self, e: ReplyEvent) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        match e {
            ReplyEvent::Content(delta) => {
                if !matches!(self.open, Open::Text { .. }) {
                    self.close(&mut out);
                    let index = self.output.len();
                    let id = new_id("msg_");
                    let item = message_item(&id, "in_progress", None);
                    self.output.push(item.clone());
                    out.push(self.event(
                        "response.output_item.added",
                        json!({ "output_index": index, "item": item }),
                    ));
                    out.push(self.event(
                        "response.content_part.added",
                        json!({ "item_id": id, "output_index": index, "content_index": 0, "part": text_part("") }),
                    ));
                    self.open = Open::Text {
                        index,
                        id,
                        text: String::new(),
                    };
                }
                if let Open::Text { index, id, text } = &mut self.open {
                    text.push_str(&delta);
                    let payload = json!({
                        "item_id": id, "output_index": index, "content_index": 0,
                        "delta": delta, "logprobs": [],
                    });
                    out.push(self.event("response.output_text.delta", payload));
                }
            }
            ReplyEvent::CallStart { id, name, .. } => {
                self.close(&mut out);
                let index = self.output.len();
                let item = call_item(&new_id("fc_"), &id, &name, "", "in_progress");
                self.output.push(item.clone());
                self.calls.push(index);
                out.push(self.event(
                    "response.output_item.added",
                    json!({ "output_index": index, "item": item }),
                ));
                self.open = Open::Call { index };
            }
            ReplyEvent::CallArgs { index: call, text } => {
                let Some(&index) = self.calls.get(call) else {
                    return out;
                };
                let item = &mut self.output[index];
                let args = item["arguments"].as_str().unwrap_or("").to_string() + &text;
                item["arguments"] = json!(args);
                let item_id = item["id"].clone();
                out.push(self.event(
                    "response.function_call_arguments.delta",
                    json!({ "item_id": item_id, "output_index": index, "delta": text }),
                ));
            }
        }
        out
    }

    /// Closes the open item; the events for it.
    pub fn finish(&mut self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        self.close(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_in_openai_order_with_increasing_sequence_numbers() {
        let mut w = EventWriter::default();
        let mut events = Vec::new();
        for e in [
            ReplyEvent::Content("Hal".into()),
            ReplyEvent::Content("lo".into()),
            ReplyEvent::CallStart {
                index: 0,
                id: "call_1".into(),
                name: "f".into(),
            },
            ReplyEvent::CallArgs {
                index: 0,
                text: "{\"a\":".into(),
            },
            ReplyEvent::CallArgs {
                index: 0,
                text: " 1}".into(),
            },
        ] {
            events.extend(w.reply_event(e));
        }
        events.extend(w.finish());
        let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
            ]
        );
        for (i, (_, v)) in events.iter().enumerate() {
            assert_eq!(v["sequence_number"], i as u64);
        }
        assert_eq!(w.output[0]["content"][0]["text"], "Hallo");
        assert_eq!(w.output[1]["arguments"], "{\"a\": 1}");
        assert_eq!(w.output[1]["call_id"], "call_1");
        assert_eq!(w.output[1]["status"], "completed");
    }
}
