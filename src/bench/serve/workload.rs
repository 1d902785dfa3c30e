//! What `inhaus bench serve` sends: each request of a sweep point as a chain of turns (one turn for
//! a single prompt; one per user message for a multi-turn conversation, each sent with the history
//! so far), built from synthetic prompts, a JSONL dataset, shared prefixes, structured-output or
//! tool-call requests. Everything is derived from a seed, so a run is repeatable.
use super::dataset::load_dataset;
use super::words::words;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("length {0:?}: expected N or MIN:MAX with 1 <= MIN <= MAX")]
    BadLength(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {why}")]
    BadLine {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{0}: no usable prompts or conversations")]
    Empty(PathBuf),
    #[error("{0} requests need --endpoint chat")]
    NeedsChat(&'static str),
}

/// Which API the requests go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    /// `/v1/chat/completions` with messages.
    Chat,
    /// `/v1/completions` with a raw text prompt (the messages' contents joined).
    Completions,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
        }
    }
}

/// The kind of requests generated (a `--dataset` replaces the synthetic prompts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Random-word prompts of `--input-len`, `--output-len` tokens generated with `ignore_eos`.
    Synthetic,
    /// N system prompts x M questions: requests share long prefixes (prefix caching shows).
    SharedPrefix,
    /// `response_format` json_schema requests (the output ends when the JSON does).
    Structured,
    /// Requests with a tool the model must call (`tool_choice: required`).
    Tools,
}

/// A token count, fixed (`128`) or drawn uniformly from a range (`100:200`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LenRange {
    pub min: usize,
    pub max: usize,
}

impl FromStr for LenRange {
    type Err = WorkloadError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || WorkloadError::BadLength(s.to_string());
        let parse = |t: &str| t.trim().parse::<usize>().map_err(|_| bad());
        let (min, max) = match s.split_once(':') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(s)?, parse(s)?),
        };
        if min == 0 || min > max {
            return Err(bad());
        }
        Ok(LenRange { min, max })
    }
}

impl std::fmt::Display for LenRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}:{}", self.min, self.max)
        }
    }
}

impl LenRange {
    fn draw(&self, rng: &mut StdRng) -> usize {
        rng.random_range(self.min..=self.max)
    }
}

/// What to generate; see the CLI for the meaning of each field.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub kind: WorkloadKind,
    pub dataset: Option<PathBuf>,
    pub input_len: LenRange,
    pub output_len: LenRange,
    /// Shared-prefix workload: number of system prompts, questions per system prompt, and the
    /// system prompts' length in tokens.
    pub prefix_systems: usize,
    pub prefix_questions: usize,
    pub prefix_len: usize,
    pub endpoint: Endpoint,
    /// Sent as `temperature`; `None` sends none, so the server's default sampling applies (what
    /// the OpenAI SDKs send).
    pub temperature: Option<f64>,
}

impl WorkloadSpec {
    /// One line for reports: what was sent.
    pub fn describe(&self) -> String {
        let base = match (&self.dataset, self.kind) {
            (Some(p), _) => format!("dataset {}", p.display()),
            (None, WorkloadKind::SharedPrefix) => format!(
                "shared-prefix {} systems x {} questions, prefix {} tok, question {} tok",
                self.prefix_systems, self.prefix_questions, self.prefix_len, self.input_len
            ),
            (None, k) => format!(
                "{} input {} tok",
                match k {
                    WorkloadKind::Structured => "structured",
                    WorkloadKind::Tools => "tools",
                    _ => "synthetic",
                },
                self.input_len
            ),
        };
        let sampling = match self.temperature {
            Some(t) => format!("temperature {t}"),
            None => "server-default sampling".into(),
        };
        format!(
            "{base}, output {} tok, {:?}, {sampling}",
            self.output_len, self.endpoint
        )
        .to_lowercase()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// One request.
#[derive(Clone, Debug)]
pub struct Turn {
    pub messages: Vec<Message>,
    pub max_tokens: usize,
    /// Sent with `ignore_eos`: the server must produce exactly `max_tokens` tokens.
    pub exact_len: bool,
    /// Extra body fields (response_format, tools).
    pub extra: Option<Value>,
}

/// Turns sent one after the other, each after the previous one's answer has ended.
pub type Chain = Vec<Turn>;

impl Turn {
    /// The JSON body of this turn's streaming request.
    pub fn body(&self, model: &str, endpoint: Endpoint, temperature: Option<f64>) -> Value {
        let mut body = json!({
            "model": model,
            "max_tokens": self.max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if let Some(t) = temperature {
            body["temperature"] = json!(t);
        }
        match endpoint {
            Endpoint::Chat => body["messages"] = json!(self.messages),
            Endpoint::Completions => {
                let prompt: Vec<&str> = self.messages.iter().map(|m| m.content.as_str()).collect();
                body["prompt"] = json!(prompt.join("\n\n"));
            }
        }
        if self.exact_len {
            body["ignore_eos"] = json!(true);
        }
        if let (Some(Value::Object(extra)), Value::Object(b)) = (&self.extra, &mut body) {
            for (k, v) in extra {
                b.insert(k.clone(), v.clone());
            }
        }
        body
    }
}

/// The requests of a run: `chain(point, i)` is the i-th request of sweep point `point`.
pub struct Workload {
    spec: WorkloadSpec,
    seed: u64,
    dataset: Vec<Chain>,
    systems: Vec<String>,
}

fn structured_extra() -> Value {
    json!({"response_format": {"type": "json_schema", "json_schema": {"name": "inventory", "strict": true,
        "schema": {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object",
            "properties": {"name": {"type": "string"}, "count": {"type": "integer"}},
            "required": ["name", "count"], "additionalProperties": false}}},
        "required": ["items"], "additionalProperties": false}}}})
}

fn tools_extra() -> Value {
    json!({"tool_choice": "required", "tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}}]})
}

impl Workload {
    pub fn new(spec: WorkloadSpec, seed: u64) -> Result<Workload, WorkloadError> {
        if spec.endpoint == Endpoint::Completions && spec.dataset.is_none() {
            match spec.kind {
                WorkloadKind::Structured => return Err(WorkloadError::NeedsChat("structured")),
                WorkloadKind::Tools => return Err(WorkloadError::NeedsChat("tool-call")),
                _ => {}
            }
        }
        let dataset = match &spec.dataset {
            Some(p) => load_dataset(p, spec.output_len)?,
            None => Vec::new(),
        };
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5157_4E4D);
        let systems = (0..spec.prefix_systems.max(1))
            .map(|s| {
                format!(
                    "You are assistant number {s}. Background: {}",
                    words(&mut rng, spec.prefix_len)
                )
            })
            .collect();
        Ok(Workload {
            spec,
            seed,
            dataset,
            systems,
        })
    }

    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    /// The i-th request (chain of turns) of sweep point `point`.
    pub fn chain(&self, point: usize, i: usize) -> Chain {
        let mut rng = StdRng::seed_from_u64(
            self.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add((point as u64) << 32 | i as u64),
        );
        let spec = &self.spec;
        if !self.dataset.is_empty() {
            // Each point starts further along the dataset, so points do not replay the same prompts.
            let n = self.dataset.len();
            return self.dataset[(point.wrapping_mul(7919) + i) % n].clone();
        }
        let output = spec.output_len.draw(&mut rng);
        let input = spec.input_len.draw(&mut rng);
        // A tag unique to the request leads the text, so no two prompts share a prefix by chance.
        let tag = format!("Request {point}-{i}:");
        let (messages, exact_len, extra) = match spec.kind {
            WorkloadKind::Synthetic => (
                vec![user(format!("{tag} {}", words(&mut rng, input)))],
                true,
                None,
            ),
            WorkloadKind::SharedPrefix => {
                let q = self.systems.len();
                let system = &self.systems[i % q];
                let question = format!("{tag} {}", words(&mut rng, input));
                let messages = vec![
                    Message {
                        role: "system".into(),
                        content: system.clone(),
                    },
                    user(question),
                ];
                (messages, true, None)
            }
            WorkloadKind::Structured => (
                vec![user(format!(
                    "{tag} List the things in this text with how often each occurs, as JSON: {}",
                    words(&mut rng, input)
                ))],
                false,
                Some(structured_extra()),
            ),
            WorkloadKind::Tools => (
                vec![user(format!(
                    "{tag} What is the weather like in the city this text is about? {}",
                    words(&mut rng, input)
                ))],
                false,
                Some(tools_extra()),
            ),
        };
        vec![Turn {
            messages,
            max_tokens: output,
            exact_len,
            extra,
        }]
    }

    /// Requests per point of the shared-prefix workload when no count is given: every question
    /// for every system prompt once.
    pub fn natural_size(&self) -> Option<usize> {
        match (self.spec.kind, self.dataset.len()) {
            (_, n) if n > 0 => Some(n),
            (WorkloadKind::SharedPrefix, _) => {
                Some(self.spec.prefix_systems.max(1) * self.spec.prefix_questions.max(1))
            }
            _ => None,
        }
    }
}

pub(super) fn user(content: String) -> Message {
    Message {
        role: "user".into(),
        content,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_parse() {
        assert_eq!(
            "100:200".parse::<LenRange>().ok(),
            Some(LenRange { min: 100, max: 200 })
        );
        assert_eq!(
            "7".parse::<LenRange>().ok(),
            Some(LenRange { min: 7, max: 7 })
        );
        assert!("0".parse::<LenRange>().is_err());
        assert!("5:3".parse::<LenRange>().is_err());
        assert!("x".parse::<LenRange>().is_err());
    }
}
