//! Machine-readable marking of generated output (EU AI Act Art. 50): the `AI-Disclosure` response
//! header (the IETF draft's structured-field dictionary) and a `provenance` object in the body (the
//! model, its weights' sha256 and quantization, the sampling parameters, the time, the request id
//! and the sha256 of the generated content), optionally signed with an Ed25519 key so that anyone
//! holding the public key can check a saved response (`inhaus provenance verify`).
//!
//! What is signed: the provenance object without its `signature`, serialized as canonical JSON
//! (object keys sorted, no whitespace), prefixed by `inhaus-provenance-v1\n`. The content digest
//! covers the generated content of every choice in order, as canonical JSON
//! `[{"text": ..., "tool_calls": [{"name": ..., "arguments": ...}]}, ...]`, so the same answer has
//! the same digest in every wire shape (chat completions, completions, responses, messages).
use crate::digest::sha256_hex;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{json, Map, Value};
use std::path::Path;
use thiserror::Error;

const DOMAIN: &[u8] = b"inhaus-provenance-v1\n";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Error)]
pub enum ProvenanceError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not a base64 Ed25519 key of 32 bytes")]
    BadKey(String),
    #[error("the response has no provenance")]
    Missing,
    #[error("the provenance is not signed")]
    Unsigned,
    #[error("the content does not match the provenance (content_sha256 {expected}, content has {actual})")]
    ContentChanged { expected: String, actual: String },
    #[error(
        "the signature does not verify: the provenance was changed or signed with another key"
    )]
    BadSignature,
    #[error("the response is not one inhaus writes: {0}")]
    UnknownShape(String),
}

/// JSON with object keys sorted and no whitespace.
pub fn canonical_json(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// One choice's generated content: its text and its tool calls (name, arguments as JSON text).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChoiceContent {
    pub text: String,
    pub tool_calls: Vec<(String, String)>,
}

/// The hex sha256 of the choices' content.
pub fn content_sha256(choices: &[ChoiceContent]) -> String {
    let list: Vec<Value> = choices
        .iter()
        .map(|c| {
            // Arguments as canonical JSON (when they parse), so that a call's digest does not depend
            // on the wire's spacing or on whether it carries them as text or as an object.
            let calls: Vec<Value> = c
                .tool_calls
                .iter()
                .map(|(n, a)| {
                    let a = serde_json::from_str::<Value>(a)
                        .map(|v| canonical_json(&v))
                        .unwrap_or_else(|_| a.clone());
                    json!({ "name": n, "arguments": a })
                })
                .collect();
            json!({ "text": c.text, "tool_calls": calls })
        })
        .collect();
    sha256_hex(canonical_json(&Value::Array(list)).as_bytes())
}

fn signed_bytes(provenance: &Value) -> Vec<u8> {
    let mut p = provenance.clone();
    if let Some(sig) = p.get_mut("signature").and_then(Value::as_object_mut) {
        sig.remove("value");
    }
    let mut out = DOMAIN.to_vec();
    out.extend_from_slice(canonical_json(&p).as_bytes());
    out
}

/// The server's signing key.
pub struct ProvenanceSigner {
    key: SigningKey,
    /// The first 16 hex digits of the public key's sha256.
    pub key_id: String,
}

impl ProvenanceSigner {
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let key_id = sha256_hex(key.verifying_key().as_bytes())[..16].to_string();
        Self { key, key_id }
    }

    /// A new random key.
    pub fn generate() -> Self {
        Self::from_seed(rand::random::<[u8; 32]>())
    }

    /// Reads a key file written by `inhaus keys signing-key new` (the base64 seed).
    pub fn load(path: &Path) -> Result<Self, ProvenanceError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProvenanceError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self::from_seed(decode_32(
            text.trim(),
            &path.display().to_string(),
        )?))
    }

    /// The key file's content (base64 of the 32-byte seed).
    pub fn seed_base64(&self) -> String {
        B64.encode(self.key.to_bytes())
    }

    pub fn public_base64(&self) -> String {
        B64.encode(self.key.verifying_key().as_bytes())
    }

    /// Adds `signature` (algorithm, key id and value) to `provenance`.
    pub fn sign(&self, provenance: &mut Value) {
        provenance["signature"] = json!({ "alg": "ed25519", "key_id": self.key_id });
        let sig = self.key.sign(&signed_bytes(provenance));
        provenance["signature"]["value"] = json!(B64.encode(sig.to_bytes()));
    }
}

fn decode_32(text: &str, what: &str) -> Result<[u8; 32], ProvenanceError> {
    B64.decode(text)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| ProvenanceError::BadKey(what.to_string()))
}

/// A public key from its base64 text (as `keys signing-key new` prints and writes to `FILE.pub`).
pub fn public_key(text: &str) -> Result<VerifyingKey, ProvenanceError> {
    VerifyingKey::from_bytes(&decode_32(text.trim(), "the public key")?)
        .map_err(|_| ProvenanceError::BadKey("the public key".into()))
}

/// The generated content of a saved (non-streamed) response of any of the generation APIs.
pub fn response_content(body: &Value) -> Result<Vec<ChoiceContent>, ProvenanceError> {
    let str_of = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let kind = body
        .get("object")
        .or_else(|| body.get("type"))
        .and_then(Value::as_str);
    match kind {
        Some("chat.completion") | Some("text_completion") => {
            let choices = body.get("choices").and_then(Value::as_array).ok_or(
                ProvenanceError::UnknownShape("a completion without choices".into()),
            )?;
            Ok(choices
                .iter()
                .map(|c| {
                    let m = c.get("message");
                    let text = match m {
                        Some(m) => str_of(&m["content"]),
                        None => str_of(&c["text"]),
                    };
                    let calls = m
                        .and_then(|m| m.get("tool_calls"))
                        .and_then(Value::as_array)
                        .map(|l| {
                            l.iter()
                                .map(|t| {
                                    (
                                        str_of(&t["function"]["name"]),
                                        str_of(&t["function"]["arguments"]),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    ChoiceContent {
                        text,
                        tool_calls: calls,
                    }
                })
                .collect())
        }
        Some("response") => {
            let mut c = ChoiceContent::default();
            for item in body
                .get("output")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match item["type"].as_str() {
                    Some("message") => {
                        for part in item["content"].as_array().into_iter().flatten() {
                            c.text.push_str(part["text"].as_str().unwrap_or_default());
                        }
                    }
                    Some("function_call") => c
                        .tool_calls
                        .push((str_of(&item["name"]), str_of(&item["arguments"]))),
                    _ => {}
                }
            }
            Ok(vec![c])
        }
        Some("message") => {
            let mut c = ChoiceContent::default();
            for block in body
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match block["type"].as_str() {
                    Some("text") => c.text.push_str(block["text"].as_str().unwrap_or_default()),
                    Some("tool_use") => c
                        .tool_calls
                        .push((str_of(&block["name"]), canonical_json(&block["input"]))),
                    _ => {}
                }
            }
            Ok(vec![c])
        }
        other => Err(ProvenanceError::UnknownShape(format!("object {other:?}"))),
    }
}

/// Checks a saved response: its content against the provenance's digest, and the signature.
pub fn verify(body: &Value, key: &VerifyingKey) -> Result<(), ProvenanceError> {
    let p = body.get("provenance").ok_or(ProvenanceError::Missing)?;
    let expected = p["content_sha256"].as_str().unwrap_or_default().to_string();
    let actual = content_sha256(&response_content(body)?);
    if expected != actual {
        return Err(ProvenanceError::ContentChanged { expected, actual });
    }
    let value = p
        .pointer("/signature/value")
        .and_then(Value::as_str)
        .ok_or(ProvenanceError::Unsigned)?;
    let sig = B64
        .decode(value)
        .ok()
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or(ProvenanceError::BadSignature)?;
    key.verify(&signed_bytes(p), &sig)
        .map_err(|_| ProvenanceError::BadSignature)
}

/// The `AI-Disclosure` header value (a structured-field dictionary): generated by a model, which
/// one, by what, when.
pub fn disclosure_header(model: &str, unix_time: u64) -> String {
    let quoted: String = model
        .chars()
        .filter(|c| (' '..='~').contains(c))
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("mode=ai-generated, model=\"{quoted}\", provider=\"inhaus\", date=@{unix_time}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_chat(signer: &ProvenanceSigner) -> Value {
        let mut body = json!({
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hallo Welt",
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]}}],
        });
        let content = response_content(&body).expect("content");
        let mut p =
            json!({ "model": "m", "content_sha256": content_sha256(&content), "created": 1 });
        signer.sign(&mut p);
        body["provenance"] = p;
        body
    }

    #[test]
    fn a_signed_response_verifies_and_any_edit_breaks_it() {
        let signer = ProvenanceSigner::generate();
        let key = public_key(&signer.public_base64()).expect("key");
        let body = signed_chat(&signer);
        verify(&body, &key).expect("verifies");
        // One byte of the content.
        let mut edited = body.clone();
        edited["choices"][0]["message"]["content"] = json!("Hallo Welt!");
        assert!(matches!(
            verify(&edited, &key),
            Err(ProvenanceError::ContentChanged { .. })
        ));
        // One byte of the provenance.
        let mut edited = body.clone();
        edited["provenance"]["model"] = json!("n");
        assert!(matches!(
            verify(&edited, &key),
            Err(ProvenanceError::BadSignature)
        ));
        // Another key.
        let other = public_key(&ProvenanceSigner::generate().public_base64()).expect("key");
        assert!(matches!(
            verify(&body, &other),
            Err(ProvenanceError::BadSignature)
        ));
        // The key file round-trips.
        let again =
            ProvenanceSigner::from_seed(decode_32(&signer.seed_base64(), "seed").expect("seed"));
        assert_eq!(again.public_base64(), signer.public_base64());
    }

    #[test]
    fn the_same_answer_has_the_same_digest_in_every_wire_shape() {
        let chat = json!({"object": "chat.completion", "choices": [{"message": {"content": "Hi",
            "tool_calls": [{"function": {"name": "f", "arguments": "{\"a\": 1}"}}]}}]});
        let resp = json!({"object": "response", "output": [
            {"type": "message", "content": [{"type": "output_text", "text": "Hi"}]},
            {"type": "function_call", "name": "f", "arguments": "{\"a\":1}"}]});
        let msg = json!({"type": "message", "content": [{"type": "text", "text": "Hi"},
            {"type": "tool_use", "name": "f", "input": {"a": 1}}]});
        let d = |v: &Value| content_sha256(&response_content(v).expect("content"));
        assert_eq!(d(&chat), d(&resp));
        assert_eq!(d(&chat), d(&msg));
    }

    #[test]
    fn the_disclosure_header_is_a_structured_field_dictionary() {
        assert_eq!(
            disclosure_header("qwen \"x\"", 1700000000),
            "mode=ai-generated, model=\"qwen \\\"x\\\"\", provider=\"inhaus\", date=@1700000000"
        );
    }
}
