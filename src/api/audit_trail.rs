//! One audit record per API request (`--audit-log`): the request log middleware opens a draft
//! (request id, client address, endpoint, method), the key check adds the key's name, the handlers
//! add the model and, when the answer is complete, the token counts and finish reason; the record is
//! written when the last holder lets go of the draft (after the response, or at the end of a stream).
//! No prompt or output text is recorded unless `--audit-content` asks for it; then the request body
//! and the output go to the writer, which seals them for their subject (`X-Inhaus-Subject`, else
//! the key's name) before anything reaches the disk.
use crate::audit::writer::AuditLog;
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The peer address of a connection (set by the accept loop).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

struct Draft {
    log: Arc<AuditLog>,
    fields: Mutex<Map<String, Value>>,
    start: Instant,
}

impl Drop for Draft {
    fn drop(&mut self) {
        let mut fields =
            std::mem::take(&mut *self.fields.lock().unwrap_or_else(|e| e.into_inner()));
        let request = fields.remove("request");
        let output = fields.remove("output");
        if self.log.keeps_content() {
            fields.insert(
                "content_plain".into(),
                json!({ "request": request, "output": output }),
            );
        }
        fields.insert(
            "latency_ms".into(),
            json!((self.start.elapsed().as_secs_f64() * 1e4).round() / 10.0),
        );
        self.log.submit(Value::Object(fields));
    }
}

/// A request's audit record while the request runs.
#[derive(Clone)]
pub struct AuditHandle(Arc<Draft>);

impl AuditHandle {
    pub fn new(log: Arc<AuditLog>, fields: Map<String, Value>) -> Self {
        Self(Arc::new(Draft {
            log,
            fields: Mutex::new(fields),
            start: Instant::now(),
        }))
    }

    /// Whether the request's body and output are kept (encrypted) with its record.
    pub fn keeps_content(&self) -> bool {
        self.0.log.keeps_content()
    }

    pub fn set(&self, key: &str, value: Value) {
        self.0
            .fields
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), value);
    }
}

/// The name an API key appears under in the audit log: never the key itself.
pub fn key_name(key: &str) -> String {
    format!("key-{}", &crate::keys::key_hash(key)[..8])
}
