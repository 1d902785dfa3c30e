//! Every generation response is marked as AI output (EU AI Act Art. 50): the `AI-Disclosure` header,
//! and a `provenance` object in the body (in the final event of a stream) naming the model, its
//! weights' sha256 and quantization, the sampling parameters, the time, the request id and the
//! digest of the generated content, signed when the server has a signing key (see
//! `crate::provenance`).
use super::audit_trail::AuditHandle;
use super::errors::ApiError;
use super::observe::RequestId;
use super::tools::StreamPiece;
use super::AppState;
use crate::engine::sampler::SamplingParams;
use crate::provenance::{self, ChoiceContent, ProvenanceSigner};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use serde_json::{json, Value};
use std::sync::{Arc, OnceLock};

/// The marks of one response, known when generation starts.
#[derive(Clone)]
pub struct Mark {
    model: String,
    weights_sha256: Arc<OnceLock<String>>,
    quantization: Option<String>,
    sampling: Value,
    request_id: Option<String>,
    created: u64,
    signer: Option<Arc<ProvenanceSigner>>,
    audit: Option<AuditHandle>,
}

/// What the marks of a response take from its request: the request id, and its audit record.
pub struct RequestMarks {
    request_id: Option<String>,
    audit: Option<AuditHandle>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMarks {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
            audit: parts.extensions.get::<AuditHandle>().cloned(),
        })
    }
}

const AI_DISCLOSURE: HeaderName = HeaderName::from_static("ai-disclosure");

impl Mark {
    /// The marks of a response from `model` of the server `state`, for the request `ctx` names.
    pub fn new(
        state: &AppState,
        model: &str,
        sampling: &SamplingParams,
        ctx: RequestMarks,
    ) -> Result<Self, ApiError> {
        let served = state.generative(model)?;
        let RequestMarks { request_id, audit } = ctx;
        if let Some(a) = &audit {
            a.set("model", json!(served.loaded.name));
            a.set("weights_sha256", json!(served.loaded.weights_sha256.get()));
        }
        Ok(Self {
            model: served.loaded.name.clone(),
            weights_sha256: served.loaded.weights_sha256.clone(),
            quantization: served.loaded.quantization.clone(),
            sampling: json!({
                "temperature": sampling.temperature,
                "top_p": sampling.top_p,
                "top_k": sampling.top_k,
                "min_p": sampling.min_p,
                "seed": sampling.seed,
                "repetition_penalty": sampling.repetition_penalty,
                "presence_penalty": sampling.presence_penalty,
                "frequency_penalty": sampling.frequency_penalty,
            }),
            request_id,
            created: super::generation::now(),
            signer: state.signer.clone(),
            audit,
        })
    }

    /// Records the finished answer's token counts and finish reason in the audit trail.
    pub fn complete(&self, prompt_tokens: usize, completion_tokens: usize, finish: &str) {
        if let Some(a) = &self.audit {
            a.set("prompt_tokens", json!(prompt_tokens));
            a.set("completion_tokens", json!(completion_tokens));
            a.set("finish_reason", json!(finish));
        }
    }

    /// The `provenance` of a response whose generated content `body` holds (a response of any of
    /// the generation APIs).
    pub fn provenance(&self, body: &Value) -> Value {
        self.provenance_of(&provenance::response_content(body).unwrap_or_default())
    }

    /// The `provenance` of this generated content (as a stream sent it).
    pub fn provenance_of(&self, content: &[ChoiceContent]) -> Value {
        if let Some(a) = self.audit.as_ref().filter(|a| a.keeps_content()) {
            let output: Vec<Value> = content
                .iter()
                .map(|c| json!({ "text": c.text, "tool_calls": c.tool_calls }))
                .collect();
            a.set("output", json!(output));
        }
        let mut p = json!({
            "generator": concat!("inhaus/", env!("CARGO_PKG_VERSION")),
            "ai_generated": true,
            "model": self.model,
            "weights_sha256": self.weights_sha256.get(),
            "quantization": self.quantization,
            "sampling": self.sampling,
            "created": self.created,
            "request_id": self.request_id,
            "content_sha256": provenance::content_sha256(content),
        });
        if let Some(s) = &self.signer {
            s.sign(&mut p);
        }
        p
    }

    /// Adds the `AI-Disclosure` header.
    pub fn disclose(&self, resp: &mut Response) {
        let value = provenance::disclosure_header(&self.model, self.created);
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(AI_DISCLOSURE, v);
        }
    }
}

/// Adds streamed pieces to what a choice has sent (the content a stream's provenance covers).
pub fn record(sent: &mut ChoiceContent, pieces: &[StreamPiece]) {
    for p in pieces {
        match p {
            StreamPiece::Content(t) => sent.text.push_str(t),
            StreamPiece::CallStart { name, .. } => {
                sent.tool_calls.push((name.clone(), String::new()))
            }
            StreamPiece::CallArgs { index, text } => {
                if let Some(call) = sent.tool_calls.get_mut(*index) {
                    call.1.push_str(text);
                }
            }
        }
    }
}
