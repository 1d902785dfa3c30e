//! The request's tools and `tool_choice`, checked, and the grammar that makes a forced call valid:
//! `none` hides the tools; `auto` shows them and, once the model opens a call with its own call
//! token, constrains the rest of that call; `required` and a named function constrain the whole
//! reply to calls (one, or several with `parallel_tool_calls`) in the model's call format, each
//! naming a declared function with `arguments` valid against its `parameters`.
use super::errors::ApiError;
use crate::chat_template::ToolCallFormat;
use crate::engine::constraint::ConstraintMode;
use crate::grammar::GrammarSpec;
use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// One declared function.
#[derive(Clone, Debug)]
pub struct FunctionDef {
    pub name: String,
    pub parameters: Value,
}

/// The tools of a request as the server acts on them.
#[derive(Clone, Debug)]
pub struct ToolPlan {
    /// The tool definitions as the client sent them (for the chat template).
    pub raw: Value,
    pub functions: Vec<FunctionDef>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

fn bad(msg: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::invalid(msg, Some(param))
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_tools(tools: &[Value]) -> Result<Vec<FunctionDef>, ApiError> {
    let mut defs: Vec<FunctionDef> = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(
                format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}."),
                "tools",
            ));
        }
        let f = t
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| bad(format!("tools[{i}].function must be an object."), "tools"))?;
        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
        if !valid_name(name) {
            return Err(bad(
                format!("tools[{i}].function.name must be 1 to 64 letters, digits, `_` or `-`; got `{name}`."),
                "tools",
            ));
        }
        if defs.iter().any(|d| d.name == name) {
            return Err(bad(
                format!("tools[{i}]: the function name `{name}` is declared twice."),
                "tools",
            ));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(bad(
                    format!("tools[{i}].function.parameters must be a JSON schema object."),
                    "tools",
                ))
            }
        };
        defs.push(FunctionDef {
            name: name.to_string(),
            parameters,
        });
    }
    Ok(defs)
}

fn parse_choice(choice: Option<&Value>) -> Result<Option<ToolChoice>, ApiError> {
    const P: &str = "tool_choice";
    let named = |v: &Value| {
        v.get("type").and_then(Value::as_str) == Some("function")
            && v.pointer("/function/name")
                .and_then(Value::as_str)
                .is_some()
    };
    Ok(match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad(
                    format!("tool_choice `{other}` is not one of none, auto, required or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}."),
                    P,
                ))
            }
        }),
        Some(v) if named(v) => Some(ToolChoice::Named(
            v.pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        )),
        Some(_) => {
            return Err(bad(
                "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}.",
                P,
            ))
        }
    })
}

/// Checks `tools`, `tool_choice` and `parallel_tool_calls`; `None` when no tools take part.
pub fn plan(
    tools: Option<&[Value]>,
    tool_choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<ToolPlan>, ApiError> {
    let choice = parse_choice(tool_choice)?;
    let tools = tools.unwrap_or_default();
    let functions = parse_tools(tools)?;
    if functions.is_empty() {
        return match choice {
            Some(ToolChoice::Required) | Some(ToolChoice::Named(_)) => Err(bad(
                "tool_choice requires a call, but no tools were given.",
                "tool_choice",
            )),
            _ => Ok(None),
        };
    }
    let choice = choice.unwrap_or(ToolChoice::Auto);
    if let ToolChoice::Named(n) = &choice {
        if !functions.iter().any(|f| &f.name == n) {
            return Err(bad(
                format!("tool_choice names the function `{n}`, which is not in tools."),
                "tool_choice",
            ));
        }
    }
    if choice == ToolChoice::None {
        return Ok(None);
    }
    Ok(Some(ToolPlan {
        raw: Value::Array(tools.to_vec()),
        functions,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

impl ToolPlan {
    pub fn names(&self) -> Vec<String> {
        self.functions.iter().map(|f| f.name.clone()).collect()
    }

    /// The schema of one call's JSON object: `name` one of `functions`, `arguments` valid against
    /// that function's parameters.
    fn call_schema(functions: &[&FunctionDef], args_key: &str) -> Value {
        let alts: Vec<Value> = functions
            .iter()
            .map(|f| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": f.name}, args_key: f.parameters},
                    "required": ["name", args_key],
                    "additionalProperties": false,
                })
            })
            .collect();
        if alts.len() == 1 {
            alts.into_iter().next().unwrap_or_default()
        } else {
            json!({ "anyOf": alts })
        }
    }

    /// The grammar the reply must follow and when, given the model's call format and the id of its
    /// single call-opening token (if it has one). `None`: the reply is not constrained.
    pub fn grammar(
        &self,
        format: ToolCallFormat,
        open_token: Option<u32>,
    ) -> Option<(GrammarSpec, ConstraintMode)> {
        let allowed: Vec<&FunctionDef> = match &self.choice {
            ToolChoice::Named(n) => self.functions.iter().filter(|f| &f.name == n).collect(),
            _ => self.functions.iter().collect(),
        };
        let args_key = if format == ToolCallFormat::Llama3Json {
            "parameters"
        } else {
            "arguments"
        };
        let schema = Self::call_schema(&allowed, args_key);
        let body = crate::grammar::with_json_options(&schema);
        let forced = matches!(self.choice, ToolChoice::Required | ToolChoice::Named(_));
        match (format, forced) {
            (ToolCallFormat::Hermes, true) => {
                // A named function is called once; `required` may call several in parallel.
                let several = self.parallel && self.choice == ToolChoice::Required;
                let repeat = if several { " (\"\\n\" call)*" } else { "" };
                let lark = format!(
                    "start: call{repeat}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: %json {body}\n"
                );
                Some((GrammarSpec::Lark(lark), ConstraintMode::Whole))
            }
            (ToolCallFormat::Hermes, false) => {
                let trigger = open_token?;
                let lark = format!("start: \"\\n\" body \"\\n</tool_call>\"\nbody: %json {body}\n");
                Some((
                    GrammarSpec::Lark(lark),
                    ConstraintMode::Triggered { trigger },
                ))
            }
            (ToolCallFormat::BareJson | ToolCallFormat::Llama3Json, true) => {
                Some((GrammarSpec::JsonSchema(schema), ConstraintMode::Whole))
            }
            (ToolCallFormat::BareJson | ToolCallFormat::Llama3Json, false) => None,
        }
    }
}

impl ToolPlan {
    /// Whether the reply must be calls (`required` or a named function).
    pub fn forced(&self) -> bool {
        matches!(self.choice, ToolChoice::Required | ToolChoice::Named(_))
    }

    /// With `auto` tools and a JSON `response_format` in the Hermes format: the reply is either the
    /// JSON answer or calls, both valid.
    pub fn grammar_or_answer(&self, format: ToolCallFormat, answer: &Value) -> Option<GrammarSpec> {
        if self.forced() || format != ToolCallFormat::Hermes {
            return None;
        }
        let schema = Self::call_schema(&self.functions.iter().collect::<Vec<_>>(), "arguments");
        let body = crate::grammar::with_json_options(&schema);
        let answer = crate::grammar::with_json_options(answer);
        let repeat = if self.parallel {
            " (\"\\n\" call)*"
        } else {
            ""
        };
        Some(GrammarSpec::Lark(format!(
            "start: answer | call{repeat}\nanswer: %json {answer}\ncall: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: %json {body}\n"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<Value> {
        vec![
            json!({"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}),
            json!({"type": "function", "function": {"name": "time"}}),
        ]
    }

    #[test]
    fn choices_parse_and_bad_ones_are_400s() {
        let t = tools();
        let p = plan(Some(&t), None, None).unwrap().unwrap();
        assert_eq!((p.choice, p.parallel), (ToolChoice::Auto, true));
        assert!(plan(Some(&t), Some(&json!("none")), None)
            .unwrap()
            .is_none());
        let named = json!({"type": "function", "function": {"name": "time"}});
        let p = plan(Some(&t), Some(&named), Some(false)).unwrap().unwrap();
        assert_eq!(
            (p.choice, p.parallel),
            (ToolChoice::Named("time".into()), false)
        );
        for (tools, choice) in [
            (
                t.clone(),
                json!({"type": "function", "function": {"name": "launch"}}),
            ),
            (t.clone(), json!("always")),
            (t.clone(), json!({"type": "function"})),
            (vec![], json!("required")),
            (
                vec![json!({"type": "function", "function": {}})],
                json!("auto"),
            ),
            (vec![json!({"type": "retrieval"})], json!("auto")),
            (
                vec![json!({"type": "function", "function": {"name": "a b"}})],
                json!("auto"),
            ),
            (vec![t[0].clone(), t[0].clone()], json!("auto")),
        ] {
            let e = plan(Some(&tools), Some(&choice), None).unwrap_err();
            assert_eq!(e.status, 400, "{choice} {tools:?}");
        }
    }

    #[test]
    fn forced_calls_get_a_whole_grammar_and_auto_a_triggered_one() {
        let t = tools();
        let required = plan(Some(&t), Some(&json!("required")), Some(false))
            .unwrap()
            .unwrap();
        let (spec, mode) = required.grammar(ToolCallFormat::Hermes, Some(7)).unwrap();
        assert_eq!(mode, ConstraintMode::Whole);
        let GrammarSpec::Lark(g) = spec else {
            panic!("{spec:?}")
        };
        assert!(g.starts_with("start: call\n"), "{g}");
        assert!(g.contains("\"weather\"") && g.contains("\"time\""), "{g}");
        let auto = plan(Some(&t), None, None).unwrap().unwrap();
        let (_, mode) = auto.grammar(ToolCallFormat::Hermes, Some(7)).unwrap();
        assert_eq!(mode, ConstraintMode::Triggered { trigger: 7 });
        assert!(auto.grammar(ToolCallFormat::Hermes, None).is_none());
        assert!(auto.grammar(ToolCallFormat::BareJson, None).is_none());
        let named = plan(
            Some(&t),
            Some(&json!({"type": "function", "function": {"name": "time"}})),
            None,
        )
        .unwrap()
        .unwrap();
        let (spec, _) = named.grammar(ToolCallFormat::BareJson, None).unwrap();
        let GrammarSpec::JsonSchema(s) = spec else {
            panic!("{spec:?}")
        };
        assert_eq!(s["properties"]["name"]["const"], "time");
    }
}
