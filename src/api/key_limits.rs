//! Keys from the key store (`--key-store`) at the door: the presented key is found by its hash
//! (the file is read again when it changes, at most once a second), and its limits are applied
//! before the request runs: requests per minute, tokens per minute and per UTC day (the tokens its
//! earlier requests used: see `key_usage`), and requests running at once (held until the answer,
//! a stream included, has been sent). Over a limit: 429 with `Retry-After` and an error naming the
//! limit; other keys are not affected. Which models a key may use is checked when the
//! request's body has been read (`body.rs`), and `/v1/models` lists only those.
use super::errors::ApiError;
use super::key_usage::{seconds_to_next_day, KeyTokens, KeyUsage, TokenMeter};
use crate::keys::{KeyEntry, KeyStore};
use axum::body::{Body, Bytes, HttpBody};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

/// The store entry of the key a request was made with.
#[derive(Clone, Debug)]
pub struct KeyIdentity(pub KeyEntry);

impl KeyIdentity {
    /// Whether this key may use `model`.
    pub fn may_use(&self, model: &str) -> bool {
        self.0
            .limits
            .models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }
}

struct Loaded {
    store: KeyStore,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// The key store of a running server, and each key's usage.
pub struct ServedKeys {
    path: PathBuf,
    loaded: Mutex<Loaded>,
    usage: Arc<KeyUsage>,
}

fn modified(p: &std::path::Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// A request over its key's limit: which limit, and when to try again.
#[derive(Debug)]
pub struct OverLimit {
    message: String,
    retry_after: u64,
}

impl IntoResponse for OverLimit {
    fn into_response(self) -> Response {
        let mut resp = ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: self.message,
            kind: "rate_limit_error",
            param: None,
            code: Some("rate_limit_exceeded"),
        }
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&self.retry_after.max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

fn limited(message: String, retry_after: u64) -> OverLimit {
    OverLimit {
        message,
        retry_after,
    }
}

impl ServedKeys {
    /// The store at `path`; tokens used are counted into `tokens`.
    pub fn open(path: PathBuf, tokens: KeyTokens) -> anyhow::Result<Self> {
        let store = KeyStore::load(&path)?;
        let usage = Arc::new(KeyUsage::open(&path, tokens));
        tracing::info!(path = %path.display(), keys = store.keys.iter().filter(|k| !k.revoked).count(), "key store");
        Ok(Self {
            loaded: Mutex::new(Loaded {
                store,
                modified: modified(&path),
                checked: Instant::now(),
            }),
            path,
            usage,
        })
    }

    /// Counts a request's tokens against the key `name`.
    pub fn meter(&self, name: &str) -> TokenMeter {
        self.usage.meter(name)
    }

    /// The live entry of a presented key (the store re-read first if its file changed).
    pub fn identify(&self, key: &str) -> Option<KeyEntry> {
        let mut l = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if l.checked.elapsed() >= Duration::from_secs(1) {
            l.checked = Instant::now();
            let m = modified(&self.path);
            if m != l.modified {
                match KeyStore::load(&self.path) {
                    Ok(store) => {
                        l.store = store;
                        l.modified = m;
                        tracing::info!(path = %self.path.display(), "key store reloaded");
                    }
                    // Caught mid-write or broken: the keys in force stay, and it is tried again.
                    Err(e) => tracing::error!("key store not reloaded: {e}"),
                }
            }
        }
        l.store.find(key).cloned()
    }

    /// Admits a request of `entry` under its limits; the guard holds its place among the running.
    pub fn admit(&self, entry: &KeyEntry) -> Result<KeyGuard, OverLimit> {
        let mut per_key = self.usage.per_key.lock().unwrap_or_else(|e| e.into_inner());
        let u = per_key.entry(entry.name.clone()).or_default();
        let now = Instant::now();
        u.expire(now);
        let name = &entry.name;
        let l = &entry.limits;
        if let Some(rpm) = l.rpm.filter(|&r| u.recent.len() >= r as usize) {
            return Err(limited(
                format!("The key `{name}` is limited to {rpm} requests per minute."),
                u.requests_wait(now),
            ));
        }
        if let Some(tpm) = l.tpm.filter(|&t| u.minute_tokens() >= t) {
            return Err(limited(
                format!("The key `{name}` is limited to {tpm} tokens per minute."),
                u.tokens_wait(now, tpm),
            ));
        }
        if let Some(day) = l.tokens_per_day.filter(|&t| u.day_tokens() >= t) {
            return Err(limited(
                format!("The key `{name}` is limited to {day} tokens per day (UTC); it has used them today."),
                seconds_to_next_day(),
            ));
        }
        if let Some(max) = l.max_concurrent.filter(|&m| u.running >= m) {
            return Err(limited(
                format!("The key `{name}` may run at most {max} requests at once."),
                1,
            ));
        }
        u.recent.push_back(now);
        u.running += 1;
        Ok(KeyGuard {
            usage: self.usage.clone(),
            name: entry.name.clone(),
        })
    }
}

/// A request's place among its key's running requests; released when dropped.
pub struct KeyGuard {
    usage: Arc<KeyUsage>,
    name: String,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let mut per_key = self.usage.per_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(u) = per_key.get_mut(&self.name) {
            u.running = u.running.saturating_sub(1);
        }
    }
}

/// A response body that holds its key's guard until the body is done (or dropped).
struct Guarded {
    inner: Body,
    _guard: KeyGuard,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `resp` with `guard` held until its body has been sent.
pub fn hold(resp: Response, guard: KeyGuard) -> Response {
    resp.map(|inner| {
        Body::new(Guarded {
            inner,
            _guard: guard,
        })
    })
}
