//! `--dataset FILE.jsonl` for `inhaus bench serve`: each line one request, a single prompt or a
//! multi-turn conversation (one turn per user message, each sent with the history so far).
use super::workload::{user, Chain, LenRange, Message, Turn, WorkloadError};
use serde_json::Value;
use std::path::Path;

/// One dataset line: `{"prompt": ...}`, `{"messages": [...]}` (several user messages make a
/// multi-turn conversation) or ShareGPT's `{"conversations": [{"from": "human", "value": ...}]}`;
/// optional `max_tokens` / `output_len`, and `"ignore_eos": false` to let the model end its answer
/// (by default every answer is made exactly `max_tokens` long).
pub(super) fn parse_line(v: &Value, output_len: LenRange) -> Result<Chain, String> {
    let max_tokens = v
        .get("max_tokens")
        .or_else(|| v.get("output_len"))
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .unwrap_or(output_len.max);
    let exact_len = match v.get("ignore_eos") {
        None => true,
        Some(b) => b.as_bool().ok_or("\"ignore_eos\" must be true or false")?,
    };
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
            exact_len,
            extra: None,
        })
        .collect();
    if chain.is_empty() {
        return Err("no user message".into());
    }
    Ok(chain)
}

pub(super) fn load_dataset(path: &Path, output_len: LenRange) -> Result<Vec<Chain>, WorkloadError> {
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
    use serde_json::json;

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
        assert!(chain[0].exact_len, "ignore_eos is sent by default");
    }

    #[test]
    fn a_line_may_let_the_model_end_its_answer() {
        let v = json!({"prompt": "p", "max_tokens": 7, "ignore_eos": false});
        let chain = parse_line(&v, LenRange { min: 9, max: 9 }).unwrap_or_default();
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].max_tokens, 7);
        assert!(!chain[0].exact_len);
        let bad = json!({"prompt": "p", "ignore_eos": "no"});
        let err = parse_line(&bad, LenRange { min: 9, max: 9 })
            .err()
            .unwrap_or_default();
        assert!(err.contains("ignore_eos"), "{err}");
    }
}
