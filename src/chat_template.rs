//! Chat templates: the model's own Jinja template (GGUF `tokenizer.chat_template`), rendered with
//! minijinja the way Hugging Face transformers renders it (trim_blocks, lstrip_blocks,
//! `raise_exception`, Python string methods), or a built-in template for a known family.
use minijinja::{Environment, ErrorKind, Value};
use serde::Serialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ChatTemplateError {
    #[error("chat template error: {0}")]
    Render(String),
    #[error("this model has no chat template")]
    Missing,
}

/// One chat message as templates see it: `content` is a string or a list of content parts; an
/// assistant turn may carry `tool_calls` (arguments as JSON objects, as Hugging Face templates expect)
/// and a tool result its `tool_call_id` and `name`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: serde_json::Value::String(content.into()),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }
}

/// Python's `", "` before every item but the first.
fn item_separator<W: ?Sized + std::io::Write>(writer: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        writer.write_all(b", ")
    }
}

/// serde_json formatting with Python `json.dumps` separators (`", "` and `": "`).
struct PythonJsonFormatter;

impl serde_json::ser::Formatter for PythonJsonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(writer, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// `tojson` as transformers defines it for chat templates: `json.dumps(x, ensure_ascii=False,
/// indent=indent)` - Python's separators, no HTML escaping, keys in their given order (minijinja's
/// own filter writes compact, HTML-escaped JSON, which changes the prompt's tokens).
fn python_tojson(
    value: Value,
    kwargs: minijinja::value::Kwargs,
) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let res = match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            serde::Serialize::serialize(&value, &mut ser)
        }
        None => {
            let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonJsonFormatter);
            serde::Serialize::serialize(&value, &mut ser)
        }
    };
    res.map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let text = String::from_utf8(out)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from_safe_string(text))
}

/// Gemma's chat format: a system message is folded into the first user turn; `assistant` is `model`.
pub const GEMMA_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
  {%- if messages[0]['content'] is string -%}
    {%- set system_text = messages[0]['content'] + '\n\n' -%}
  {%- else -%}
    {%- set system_text = messages[0]['content'][0]['text'] + '\n\n' -%}
  {%- endif -%}
  {%- set turns = messages[1:] -%}
{%- else -%}
  {%- set system_text = '' -%}
  {%- set turns = messages -%}
{%- endif -%}
{%- for m in turns -%}
  {%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
  {%- endif -%}
  {{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' + (system_text if loop.first else '') }}
  {%- if m['content'] is string -%}
    {{ m['content'] | trim }}
  {%- else -%}
    {%- for part in m['content'] -%}
      {%- if part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"#;

/// ChatML (`<|im_start|>role\n...<|im_end|>`), the fallback for models without a template.
pub const CHATML_TEMPLATE: &str = r#"{%- for m in messages -%}
{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"#;

/// The built-in template for an architecture family, for models whose file carries none.
pub fn builtin_template(architecture: &str) -> Option<&'static str> {
    match architecture {
        "gemma" | "gemma2" | "gemma3" => Some(GEMMA_TEMPLATE),
        _ => None,
    }
}

/// A compiled chat template with the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// How the template shows the model's tool calls (and so how the model writes them).
    pub tool_format: ToolCallFormat,
}

/// The way a model writes a function call, as its chat template shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolCallFormat {
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` (Hermes; Qwen 2.5).
    Hermes,
    /// A bare JSON object `{"name": ..., "parameters": {...}}` (Llama 3.x's JSON tool calling).
    Llama3Json,
    /// A bare JSON object `{"name": ..., "arguments": {...}}` (templates without call markup).
    BareJson,
}

fn raise_exception(msg: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", python_tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ChatTemplateError::Render(e.to_string()))?;
        let tool_format = if source.contains("<tool_call>") {
            ToolCallFormat::Hermes
        } else if source.contains("\"parameters\": ") && source.contains("<|eot_id|>") {
            ToolCallFormat::Llama3Json
        } else {
            ToolCallFormat::BareJson
        };
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            tool_format,
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's reply begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with_tools(messages, add_generation_prompt, None)
    }

    /// Renders with the tool definitions (`tools` as the client sent them) for templates that
    /// describe tools to the model.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String, ChatTemplateError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ChatTemplateError::Render(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
            tools => tools.map(Value::from_serialize),
        };
        tmpl.render(ctx).map_err(|e| {
            let mut msg = e.to_string();
            if let Some(detail) = e.detail() {
                msg = format!("{msg}: {detail}");
            }
            ChatTemplateError::Render(msg)
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_call_format_is_read_from_the_template() {
        let hermes =
            "{% for t in tools %}{{ t | tojson }}{% endfor %}<tool_call>{{ x }}</tool_call>";
        let llama3 = r#"{{ '{"name": function name, "parameters": dictionary}' }}<|eot_id|>"#;
        for (src, want) in [
            (hermes, ToolCallFormat::Hermes),
            (llama3, ToolCallFormat::Llama3Json),
            (CHATML_TEMPLATE, ToolCallFormat::BareJson),
        ] {
            let t = ChatTemplate::new(src, "<s>", "</s>").expect("template");
            assert_eq!(t.tool_format, want, "{src}");
        }
    }
    use super::*;

    /// `tojson` must print what Python's `json.dumps(x, ensure_ascii=False[, indent=n])` prints (the
    /// expected strings are Python's output), or tool definitions tokenize differently from
    /// transformers.
    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new(
            "{{ messages[0].content | tojson }}|{{ messages[1].content | tojson(indent=2) }}",
            "",
            "",
        )
        .expect("template");
        let msgs = [
            ChatMessage {
                content: serde_json::json!({"b": [1, "ü<&>"], "a": {}, "c": null, "d": 1.5}),
                ..ChatMessage::new("user", "")
            },
            ChatMessage {
                content: serde_json::json!({"b": [1, 2], "a": {}}),
                ..ChatMessage::new("user", "")
            },
        ];
        let got = t.render(&msgs, false).expect("render");
        assert_eq!(
            got,
            "{\"b\": [1, \"ü<&>\"], \"a\": {}, \"c\": null, \"d\": 1.5}|{\n  \"b\": [\n    1,\n    2\n  ],\n  \"a\": {}\n}"
        );
    }
}
