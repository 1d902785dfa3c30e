//! What `inhaus bench serve` sends: each request of a sweep point as a chain of turns (one turn for
//! a single prompt; one per user message for a multi-turn conversation, each sent with the history
//! so far), built from synthetic prompts, a JSONL dataset, shared prefixes, structured-output or
//! tool-call requests. Everything is derived from a seed, so a run is repeatable.
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
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
        format!(
            "{base}, output {} tok, {:?}",
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
    pub fn body(&self, model: &str, endpoint: Endpoint) -> Value {
        let mut body = json!({
            "model": model,
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
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

/// Common English words; with a leading space most are one token in the usual BPE vocabularies, so
/// N words make a prompt of about N tokens (the server's usage reports the exact count).
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "it",
    "by",
    "at",
    "from",
    "his",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "first",
    "one",
    "their",
    "its",
    "new",
    "after",
    "but",
    "who",
    "not",
    "they",
    "have",
    "her",
    "she",
    "two",
    "been",
    "other",
    "when",
    "there",
    "all",
    "during",
    "into",
    "school",
    "time",
    "may",
    "years",
    "more",
    "most",
    "only",
    "over",
    "city",
    "some",
    "world",
    "would",
    "where",
    "later",
    "up",
    "such",
    "used",
    "many",
    "can",
    "state",
    "about",
    "national",
    "out",
    "known",
    "university",
    "united",
    "then",
    "made",
    "year",
    "him",
    "part",
    "well",
    "between",
    "born",
    "also",
    "people",
    "team",
    "season",
    "work",
    "through",
    "high",
    "while",
    "water",
    "music",
    "house",
    "small",
    "river",
    "light",
    "road",
    "north",
    "south",
    "west",
    "east",
    "market",
    "garden",
    "window",
    "table",
    "paper",
    "letter",
    "story",
    "morning",
    "evening",
    "winter",
    "summer",
    "bridge",
    "train",
    "station",
    "village",
    "field",
    "forest",
    "mountain",
    "island",
    "ship",
    "harbor",
    "stone",
    "tower",
    "green",
    "blue",
    "red",
    "black",
    "white",
    "old",
    "young",
    "long",
    "short",
    "great",
    "little",
    "early",
    "late",
    "open",
    "close",
    "bright",
    "dark",
];

fn words(rng: &mut StdRng, n: usize) -> String {
    let mut s = String::with_capacity(n * 7);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s
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

fn user(content: String) -> Message {
    Message {
        role: "user".into(),
        content,
    }
}

/// One dataset line: `{"prompt": ...}`, `{"messages": [...]}` (several user messages make a
/// multi-turn conversation) or ShareGPT's `{"conversations": [{"from": "human", "value": ...}]}`;
/// optional `max_tokens` / `output_len`.
fn parse_line(v: &Value, output_len: LenRange) -> Result<Chain, String> {
    let max_tokens = v
        .get("max_tokens")
        .or_else(|| v.get("output_len"))
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .unwrap_or(output_len.max);
    let messages: Vec<Message> = if let Some(p) = v.get("prompt").and_then(Value::as_str) {
        vec![user(p.to_string())]
    } else if let Some(list) = v
        .get("messages")
        .or_else(|| v.get("conversations"))
        .or_else(|| v.get("conversation"))
        .and_then(Value::as_array)
    {
        list.iter()
            .map(|m| {
                let role = m
                    .get("role")
                    .or_else(|| m.get("from"))
                    .and_then(Value::as_str)
                    .ok_or("a message without role")?;
                let content = m
                    .get("content")
                    .or_else(|| m.get("value"))
                    .and_then(Value::as_str)
                    .ok_or("a message without text content")?;
                let role = match role {
                    "human" => "user",
                    "gpt" | "model" => "assistant",
                    r => r,
                };
                Ok(Message {
                    role: role.to_string(),
                    content: content.to_string(),
                })
            })
            .collect::<Result<_, &str>>()?
    } else {
        return Err("expected \"prompt\", \"messages\" or \"conversations\"".into());
    };
    let chain: Chain = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| m.role == "user")
        .map(|(i, _)| Turn {
            messages: messages[..=i].to_vec(),
            max_tokens,
            exact_len: true,
            extra: None,
        })
        .collect();
    if chain.is_empty() {
        return Err("no user message".into());
    }
    Ok(chain)
}

fn load_dataset(path: &Path, output_len: LenRange) -> Result<Vec<Chain>, WorkloadError> {
    let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut chains = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| WorkloadError::BadLine {
            path: path.to_path_buf(),
            line: n + 1,
            why,
        };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        chains.push(parse_line(&v, output_len).map_err(bad)?);
    }
    if chains.is_empty() {
        return Err(WorkloadError::Empty(path.to_path_buf()));
    }
    Ok(chains)
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

    #[test]
    fn conversation_turns_carry_history() {
        let v = json!({"messages": [
            {"role": "system", "content": "s"}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]});
        let chain = parse_line(&v, LenRange { min: 9, max: 9 }).unwrap_or_default();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].messages.len(), 2);
        assert_eq!(chain[1].messages.len(), 4);
        assert_eq!(chain[1].max_tokens, 9);
    }
}
