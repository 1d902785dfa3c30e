//! The Responses API's store: each stored response with its input items, kept in this process's
//! memory (nothing leaves the machine), bounded by total size and by age (oldest first out), and
//! readable only with the API key that created it. A conversation continued with
//! `previous_response_id` is rebuilt by walking the chain of stored responses back to its start.
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits of the store.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    pub max_bytes: usize,
    pub max_age: Duration,
}

/// One stored response.
#[derive(Clone, Debug)]
pub struct Stored {
    /// The API key that created it (`None` on a server without keys).
    pub owner: Option<String>,
    /// The response object as returned.
    pub response: Value,
    /// This request's own input items (with ids), in order.
    pub input_items: Vec<Value>,
    pub previous: Option<String>,
}

struct Entry {
    stored: Stored,
    bytes: usize,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Ids in the order stored (oldest first); deleted ids are skipped when met.
    order: VecDeque<String>,
    bytes: usize,
}

/// Why a conversation could not be rebuilt.
#[derive(Debug, PartialEq, Eq)]
pub enum ChainError {
    /// The previous response is not stored, or belongs to another key.
    NotFound,
    /// An earlier response of the chain is no longer stored (expired or evicted).
    Broken(String),
}

pub struct ResponseStore {
    limits: StoreLimits,
    inner: Mutex<Inner>,
}

/// Longest chain of responses a conversation may have (guards against a cycle).
const MAX_CHAIN: usize = 10_000;

impl ResponseStore {
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops what is past its age, then the oldest until `extra` more bytes fit.
    fn evict(&self, inner: &mut Inner, extra: usize) {
        let now = Instant::now();
        while let Some(id) = inner.order.front().cloned() {
            let expired = match inner.entries.get(&id) {
                None => true, // deleted earlier
                Some(e) => {
                    now.duration_since(e.at) > self.limits.max_age
                        || inner.bytes + extra > self.limits.max_bytes
                }
            };
            if !expired {
                break;
            }
            inner.order.pop_front();
            if let Some(e) = inner.entries.remove(&id) {
                inner.bytes -= e.bytes;
            }
        }
    }

    /// Stores a response under `id`; one larger than the whole store is not kept.
    pub fn put(&self, id: &str, stored: Stored) {
        let bytes = id.len()
            + stored.response.to_string().len()
            + stored
                .input_items
                .iter()
                .map(|i| i.to_string().len())
                .sum::<usize>();
        if bytes > self.limits.max_bytes {
            tracing::warn!(
                id,
                bytes,
                "response larger than the whole store; not stored"
            );
            return;
        }
        let mut inner = self.lock();
        self.evict(&mut inner, bytes);
        if let Some(old) = inner.entries.remove(id) {
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        inner.order.push_back(id.to_string());
        inner.entries.insert(
            id.to_string(),
            Entry {
                stored,
                bytes,
                at: Instant::now(),
            },
        );
    }

    fn visible<'a>(&self, inner: &'a Inner, id: &str, owner: Option<&str>) -> Option<&'a Stored> {
        let e = inner.entries.get(id)?;
        let fresh = e.at.elapsed() <= self.limits.max_age;
        (fresh && e.stored.owner.as_deref() == owner).then_some(&e.stored)
    }

    /// The stored response `id`, if `owner` may see it.
    pub fn get(&self, id: &str, owner: Option<&str>) -> Option<Stored> {
        let inner = self.lock();
        self.visible(&inner, id, owner).cloned()
    }

    /// Deletes `id` if `owner` may see it; says whether it did.
    pub fn delete(&self, id: &str, owner: Option<&str>) -> bool {
        let mut inner = self.lock();
        if self.visible(&inner, id, owner).is_none() {
            return false;
        }
        if let Some(e) = inner.entries.remove(id) {
            inner.bytes -= e.bytes;
        }
        true
    }

    /// The items of the conversation up to and including response `id`, oldest first: each
    /// response's input items, then its output items.
    pub fn conversation(&self, id: &str, owner: Option<&str>) -> Result<Vec<Value>, ChainError> {
        let inner = self.lock();
        let mut turns: Vec<&Stored> = Vec::new();
        let mut next = Some(id.to_string());
        while let Some(cur) = next {
            let Some(s) = self.visible(&inner, &cur, owner) else {
                return Err(if turns.is_empty() {
                    ChainError::NotFound
                } else {
                    ChainError::Broken(cur)
                });
            };
            turns.push(s);
            if turns.len() > MAX_CHAIN {
                return Err(ChainError::Broken(cur));
            }
            next = s.previous.clone();
        }
        let mut items = Vec::new();
        for s in turns.iter().rev() {
            items.extend(s.input_items.iter().cloned());
            if let Some(out) = s.response.get("output").and_then(Value::as_array) {
                items.extend(out.iter().cloned());
            }
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(owner: Option<&str>, prev: Option<&str>, text: &str) -> Stored {
        Stored {
            owner: owner.map(str::to_string),
            response: json!({"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}]}),
            input_items: vec![json!({"type": "message", "role": "user", "content": text})],
            previous: prev.map(str::to_string),
        }
    }

    fn store(max_bytes: usize) -> ResponseStore {
        ResponseStore::new(StoreLimits {
            max_bytes,
            max_age: Duration::from_secs(3600),
        })
    }

    #[test]
    fn a_chain_is_rebuilt_oldest_first_and_only_for_its_owner() {
        let s = store(1 << 20);
        s.put("a", stored(Some("k1"), None, "one"));
        s.put("b", stored(Some("k1"), Some("a"), "two"));
        let items = s.conversation("b", Some("k1")).expect("chain");
        let texts: Vec<String> = items.iter().map(|i| i["content"].to_string()).collect();
        assert_eq!(items.len(), 4, "{texts:?}");
        assert_eq!(items[0]["content"], "one");
        assert_eq!(items[2]["content"], "two");
        assert_eq!(s.conversation("b", Some("k2")), Err(ChainError::NotFound));
        assert!(s.get("a", Some("k2")).is_none());
        assert!(!s.delete("a", Some("k2")));
        assert!(s.delete("a", Some("k1")));
        assert_eq!(
            s.conversation("b", Some("k1")),
            Err(ChainError::Broken("a".into()))
        );
    }

    #[test]
    fn the_oldest_responses_leave_when_the_store_is_full() {
        let one = stored(None, None, "x");
        let size = 1 + one.response.to_string().len() + one.input_items[0].to_string().len();
        let s = store(size * 2);
        s.put("a", one.clone());
        s.put("b", one.clone());
        s.put("c", one);
        assert!(s.get("a", None).is_none());
        assert!(s.get("b", None).is_some());
        assert!(s.get("c", None).is_some());
    }

    #[test]
    fn responses_past_their_age_are_gone() {
        let s = ResponseStore::new(StoreLimits {
            max_bytes: 1 << 20,
            max_age: Duration::ZERO,
        });
        s.put("a", stored(None, None, "x"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(s.get("a", None).is_none());
    }
}
