//! What a request constrains its output to, and how that becomes an llguidance grammar. JSON is
//! written on one line with `", "` and `": "` between items (no free whitespace), so small models
//! cannot loop on newlines and the text looks like what they were trained on.
use llguidance::api::TopLevelGrammar;
use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum GrammarSpec {
    /// Output is one JSON value valid against this schema.
    JsonSchema(Value),
    /// Output is any JSON object.
    JsonObject,
    /// Output matches this regular expression (Rust `regex` syntax) as a whole.
    Regex(String),
    /// Output is exactly one of these strings.
    Choice(Vec<String>),
    /// Output is a sentence of this Lark grammar (llguidance's dialect, `%json` allowed).
    Lark(String),
}

/// llguidance's JSON options for a schema: fixed single-line separators, unknown keywords refused.
pub fn with_json_options(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| {
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
                "lenient": false,
            })
        });
    }
    schema
}

/// A Lark string literal for `s`.
pub fn lark_literal(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

impl GrammarSpec {
    /// The key compiled grammars are cached under: equal specs, equal keys.
    pub fn cache_key(&self) -> String {
        match self {
            Self::JsonSchema(v) => format!("json:{v}"),
            Self::JsonObject => "json_object".into(),
            Self::Regex(r) => format!("regex:{r}"),
            Self::Choice(c) => format!("choice:{}", Value::from(c.clone())),
            Self::Lark(g) => format!("lark:{g}"),
        }
    }

    pub fn to_grammar(&self) -> TopLevelGrammar {
        match self {
            Self::JsonSchema(v) => TopLevelGrammar::from_json_schema(with_json_options(v)),
            Self::JsonObject => {
                TopLevelGrammar::from_json_schema(with_json_options(&json!({"type": "object"})))
            }
            Self::Regex(r) => TopLevelGrammar::from_regex(r),
            Self::Choice(c) => {
                let alts: Vec<String> = c.iter().map(|s| lark_literal(s)).collect();
                TopLevelGrammar::from_lark(format!("start: {}", alts.join(" | ")))
            }
            Self::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        }
    }
}
