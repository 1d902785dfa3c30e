//! Which grammar a request's output must follow, from the wire: OpenAI's `response_format`
//! (`text`, `json_object`, `json_schema`) and vLLM's extensions (`structured_outputs` with `json`,
//! `regex`, `choice`, `grammar` or `json_object`, and the older `guided_json`, `guided_regex`,
//! `guided_choice`, `guided_grammar`). At most one may be given; a malformed one is a 400 naming
//! the parameter. Compiling the spec (and refusing a schema llguidance cannot honour) is
//! `compile`, run off the async workers.
use super::errors::ApiError;
use super::ServedModel;
use crate::engine::constraint::{Constraint, ConstraintMode};
use crate::grammar::{GrammarError, GrammarSpec};
use serde::Deserialize;
use serde_json::Value;

/// The constraint fields both generation endpoints accept.
#[derive(Deserialize, Default)]
pub struct ConstraintParams {
    pub response_format: Option<Value>,
    pub structured_outputs: Option<Value>,
    pub guided_json: Option<Value>,
    pub guided_regex: Option<Value>,
    pub guided_choice: Option<Value>,
    pub guided_grammar: Option<Value>,
}

/// A spec and the request parameter it came from (for error messages).
pub struct OutputGrammar {
    pub spec: GrammarSpec,
    pub param: &'static str,
}

fn bad(msg: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::invalid(msg, Some(param))
}

/// A JSON schema given as an object (or a string holding one, as vLLM allows).
fn schema_value(v: &Value, param: &'static str) -> Result<Value, ApiError> {
    let v = match v {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .map_err(|e| bad(format!("{param} is not valid JSON: {e}"), param))?,
        other => other.clone(),
    };
    match v {
        Value::Object(_) => Ok(v),
        Value::Bool(true) => Ok(Value::Object(Default::default())),
        _ => Err(bad(format!("{param} must be a JSON schema object."), param)),
    }
}

fn string_value(v: &Value, param: &'static str) -> Result<String, ApiError> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(bad(format!("{param} must be a non-empty string."), param)),
    }
}

fn choice_value(v: &Value, param: &'static str) -> Result<Vec<String>, ApiError> {
    let list = v.as_array().filter(|l| !l.is_empty()).ok_or_else(|| {
        bad(
            format!("{param} must be a non-empty list of strings."),
            param,
        )
    })?;
    list.iter()
        .map(|c| match c {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            _ => Err(bad(
                format!("{param} must be a non-empty list of non-empty strings."),
                param,
            )),
        })
        .collect()
}

fn response_format(f: &Value) -> Result<Option<GrammarSpec>, ApiError> {
    const P: &str = "response_format";
    let kind = f.get("type").and_then(Value::as_str).ok_or_else(|| {
        bad(
            "response_format needs a `type`: text, json_object or json_schema.",
            P,
        )
    })?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(GrammarSpec::JsonObject)),
        "json_schema" => {
            let js = f.get("json_schema").filter(|j| j.is_object()).ok_or_else(|| {
                bad(
                    "response_format of type json_schema needs a `json_schema` object with `name` and `schema`.",
                    P,
                )
            })?;
            match js.get("name").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n.len() <= 64 => {}
                _ => {
                    return Err(bad(
                        "response_format.json_schema.name is required (1 to 64 characters).",
                        P,
                    ))
                }
            }
            match js.get("schema") {
                None | Some(Value::Null) => Ok(Some(GrammarSpec::JsonObject)),
                Some(s) => Ok(Some(GrammarSpec::JsonSchema(schema_value(s, P)?))),
            }
        }
        other => Err(bad(
            format!("response_format type `{other}` is not one of text, json_object, json_schema."),
            P,
        )),
    }
}

fn structured_outputs(so: &Value) -> Result<GrammarSpec, ApiError> {
    const P: &str = "structured_outputs";
    let obj = so
        .as_object()
        .ok_or_else(|| bad("structured_outputs must be an object.", P))?;
    let mut found: Vec<GrammarSpec> = Vec::new();
    for (k, v) in obj {
        if v.is_null() {
            continue;
        }
        match k.as_str() {
            "json" => found.push(GrammarSpec::JsonSchema(schema_value(v, P)?)),
            "regex" => found.push(GrammarSpec::Regex(string_value(v, P)?)),
            "choice" => found.push(GrammarSpec::Choice(choice_value(v, P)?)),
            "grammar" => found.push(GrammarSpec::Lark(string_value(v, P)?)),
            "json_object" if v.as_bool() == Some(true) => found.push(GrammarSpec::JsonObject),
            "json_object" => {}
            "disable_fallback" | "disable_any_whitespace" | "disable_additional_properties"
            | "whitespace_pattern" | "backend" => {}
            other => {
                return Err(bad(
                    format!("structured_outputs.{other} is not supported; use json, regex, choice, grammar or json_object."),
                    P,
                ))
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(bad(
            "structured_outputs needs one of json, regex, choice, grammar or json_object.",
            P,
        )),
        _ => Err(bad(
            "structured_outputs takes only one of json, regex, choice, grammar, json_object.",
            P,
        )),
    }
}

impl ConstraintParams {
    /// The output grammar the request asks for, if any.
    pub fn output_grammar(&self) -> Result<Option<OutputGrammar>, ApiError> {
        let mut found: Vec<OutputGrammar> = Vec::new();
        let mut push =
            |spec: GrammarSpec, param: &'static str| found.push(OutputGrammar { spec, param });
        if let Some(f) = self.response_format.as_ref().filter(|f| !f.is_null()) {
            if let Some(spec) = response_format(f)? {
                push(spec, "response_format");
            }
        }
        if let Some(so) = self.structured_outputs.as_ref().filter(|v| !v.is_null()) {
            push(structured_outputs(so)?, "structured_outputs");
        }
        if let Some(v) = self.guided_json.as_ref().filter(|v| !v.is_null()) {
            push(
                GrammarSpec::JsonSchema(schema_value(v, "guided_json")?),
                "guided_json",
            );
        }
        if let Some(v) = self.guided_regex.as_ref().filter(|v| !v.is_null()) {
            push(
                GrammarSpec::Regex(string_value(v, "guided_regex")?),
                "guided_regex",
            );
        }
        if let Some(v) = self.guided_choice.as_ref().filter(|v| !v.is_null()) {
            push(
                GrammarSpec::Choice(choice_value(v, "guided_choice")?),
                "guided_choice",
            );
        }
        if let Some(v) = self.guided_grammar.as_ref().filter(|v| !v.is_null()) {
            push(
                GrammarSpec::Lark(string_value(v, "guided_grammar")?),
                "guided_grammar",
            );
        }
        if found.len() > 1 {
            let names: Vec<&str> = found.iter().map(|g| g.param).collect();
            return Err(bad(
                format!(
                    "Only one output constraint may be given; got {}.",
                    names.join(", ")
                ),
                found[1].param,
            ));
        }
        Ok(found.pop())
    }
}

/// Compiles `spec` for `served` (cached after the first time); a grammar it cannot use is a 400
/// naming `param`. Blocking: call it off the async workers.
pub fn compile(
    served: &ServedModel,
    spec: &GrammarSpec,
    param: &'static str,
    mode: ConstraintMode,
) -> Result<Constraint, ApiError> {
    match served.grammars.compile(spec) {
        Ok(matcher) => Ok(Constraint { matcher, mode }),
        Err(GrammarError::Invalid(msg)) => Err(bad(format!("Invalid {param}: {msg}"), param)),
        Err(e @ GrammarError::Setup(_)) => Err(ApiError::internal(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Option<GrammarSpec>, ApiError> {
        let p: ConstraintParams = serde_json::from_value(v).map_err(|e| bad(e.to_string(), "x"))?;
        p.output_grammar().map(|g| g.map(|g| g.spec))
    }

    #[test]
    fn every_wire_form_becomes_its_spec() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let cases = [
            (json!({"response_format": {"type": "text"}}), None),
            (
                json!({"response_format": {"type": "json_object"}}),
                Some(GrammarSpec::JsonObject),
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}}),
                Some(GrammarSpec::JsonSchema(schema.clone())),
            ),
            (
                json!({"guided_json": schema.to_string()}),
                Some(GrammarSpec::JsonSchema(schema.clone())),
            ),
            (
                json!({"guided_regex": "\\d+"}),
                Some(GrammarSpec::Regex("\\d+".into())),
            ),
            (
                json!({"guided_choice": ["ja", "nein"]}),
                Some(GrammarSpec::Choice(vec!["ja".into(), "nein".into()])),
            ),
            (
                json!({"structured_outputs": {"grammar": "start: \"a\""}}),
                Some(GrammarSpec::Lark("start: \"a\"".into())),
            ),
            (
                json!({"structured_outputs": {"choice": ["a"]}}),
                Some(GrammarSpec::Choice(vec!["a".into()])),
            ),
        ];
        for (body, want) in cases {
            let got = parse(body.clone()).unwrap_or_else(|e| panic!("{body}: {}", e.message));
            assert_eq!(got, want, "{body}");
        }
    }

    #[test]
    fn malformed_forms_are_400s_naming_the_parameter() {
        let cases = [
            (
                json!({"response_format": {"type": "xml"}}),
                "response_format",
            ),
            (json!({"response_format": {}}), "response_format"),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
                "response_format",
            ),
            (json!({"guided_json": "{not json"}), "guided_json"),
            (json!({"guided_choice": []}), "guided_choice"),
            (json!({"guided_regex": 5}), "guided_regex"),
            (json!({"structured_outputs": {}}), "structured_outputs"),
            (
                json!({"structured_outputs": {"regex": "a", "choice": ["b"]}}),
                "structured_outputs",
            ),
            (
                json!({"guided_regex": "a", "response_format": {"type": "json_object"}}),
                "guided_regex",
            ),
        ];
        for (body, param) in cases {
            match parse(body.clone()) {
                Err(e) => {
                    assert_eq!(e.status, 400, "{body}");
                    assert_eq!(e.param, Some(param), "{body}: {}", e.message);
                }
                Ok(g) => panic!("{body} was accepted as {g:?}"),
            }
        }
    }
}
