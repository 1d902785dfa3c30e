//! The key store (`inhaus keys ...`, `serve --key-store FILE`): named API keys with rights and
//! limits, kept as their sha256 only (a key is shown once, when it is made, and never again). A key
//! may be limited to some models, to requests per minute, to tokens per minute and per day, and to
//! requests running at once. The file is JSON, written atomically; a running server reads it again
//! when it changes. Keys are 192 random bits, so a plain sha256 (no salt, no slow hash) cannot be
//! reversed by guessing: salts and slow hashes protect low-entropy passwords, not random keys.
use crate::digest::{hex, sha256_hex};
use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KeyStoreError {
    #[error("reading the key store {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the key store {path} is not valid: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("writing the key store {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("a key named `{0}` exists already")]
    Exists(String),
    #[error("no key is named `{0}`")]
    Unknown(String),
    #[error("a key name is 1 to 64 letters, digits, `-`, `_` or `.`; got `{0}`")]
    BadName(String),
}

/// What a key may do (`None`: no limit).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyLimits {
    /// The models the key may use (`None`: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Requests running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Tokens (prompt and completion) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Tokens (prompt and completion) per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
}

impl KeyLimits {
    /// These limits with every limit `other` sets taken from it (`keys update`).
    pub fn merge(&mut self, other: KeyLimits) {
        let KeyLimits {
            models,
            rpm,
            max_concurrent,
            tpm,
            tokens_per_day,
        } = other;
        self.models = models.or(self.models.take());
        self.rpm = rpm.or(self.rpm);
        self.max_concurrent = max_concurrent.or(self.max_concurrent);
        self.tpm = tpm.or(self.tpm);
        self.tokens_per_day = tokens_per_day.or(self.tokens_per_day);
    }
}

/// One key: its name, its hash and what it may do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyEntry {
    pub name: String,
    /// Hex sha256 of the key.
    pub sha256: String,
    /// Unix time it was made.
    pub created: u64,
    #[serde(default)]
    pub revoked: bool,
    #[serde(flatten)]
    pub limits: KeyLimits,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyStore {
    pub keys: Vec<KeyEntry>,
}

fn new_secret() -> String {
    format!("inh-{}", hex(&rand::random::<[u8; 24]>()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn key_hash(key: &str) -> String {
    sha256_hex(key.trim().as_bytes())
}

/// Whether two byte strings are equal, in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl KeyStore {
    /// Reads a store; a missing file is an empty store.
    pub fn load(path: &Path) -> Result<Self, KeyStoreError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(KeyStoreError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        serde_json::from_str(&text).map_err(|source| KeyStoreError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    /// Writes the store atomically (a temporary file renamed over it), readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), KeyStoreError> {
        let err = |source| KeyStoreError::Write {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| err(std::io::Error::other(e)))?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(err)?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Adds a new key; returns the key itself (shown once).
    pub fn create(&mut self, name: &str, limits: KeyLimits) -> Result<String, KeyStoreError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            return Err(KeyStoreError::BadName(name.into()));
        }
        if self.keys.iter().any(|k| k.name == name) {
            return Err(KeyStoreError::Exists(name.into()));
        }
        let secret = new_secret();
        self.keys.push(KeyEntry {
            name: name.to_string(),
            sha256: key_hash(&secret),
            created: unix_now(),
            revoked: false,
            limits,
        });
        Ok(secret)
    }

    /// Gives the key `name` a new secret (the old one stops working; name, limits and usage stay,
    /// and a revoked key is live again); returns the new secret (shown once).
    pub fn rotate(&mut self, name: &str) -> Result<String, KeyStoreError> {
        let secret = new_secret();
        let e = self.entry_mut(name)?;
        e.sha256 = key_hash(&secret);
        e.created = unix_now();
        e.revoked = false;
        Ok(secret)
    }

    pub fn entry_mut(&mut self, name: &str) -> Result<&mut KeyEntry, KeyStoreError> {
        self.keys
            .iter_mut()
            .find(|k| k.name == name)
            .ok_or_else(|| KeyStoreError::Unknown(name.into()))
    }

    /// The live (not revoked) entry of a presented key.
    pub fn find(&self, key: &str) -> Option<&KeyEntry> {
        let h = key_hash(key);
        self.keys
            .iter()
            .filter(|k| !k.revoked)
            .find(|k| constant_time_eq(k.sha256.as_bytes(), h.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_hashed_found_by_their_secret_and_revocable() {
        let mut s = KeyStore::default();
        let limits = KeyLimits {
            models: Some(vec!["m".into()]),
            rpm: Some(5),
            tpm: Some(1000),
            ..KeyLimits::default()
        };
        let secret = s.create("buchhaltung", limits.clone()).expect("create");
        assert!(matches!(
            s.create("buchhaltung", KeyLimits::default()),
            Err(KeyStoreError::Exists(_))
        ));
        assert!(matches!(
            s.create("bad name", KeyLimits::default()),
            Err(KeyStoreError::BadName(_))
        ));
        let text = serde_json::to_string(&s).expect("json");
        assert!(!text.contains(&secret), "the key itself is stored");
        assert_eq!(
            s.find(&secret).map(|e| e.name.as_str()),
            Some("buchhaltung")
        );
        assert_eq!(s.find(&secret).map(|e| &e.limits), Some(&limits));
        assert!(s.find("inh-wrong").is_none());
        s.entry_mut("buchhaltung").expect("entry").revoked = true;
        assert!(s.find(&secret).is_none());
        let back: KeyStore = serde_json::from_str(&text).expect("parse");
        assert_eq!(back.keys.len(), 1);
        let new = s.rotate("buchhaltung").expect("rotate");
        assert!(s.find(&secret).is_none(), "the old secret still works");
        assert_eq!(s.find(&new).map(|e| &e.limits), Some(&limits));
    }

    #[test]
    fn an_update_changes_only_the_limits_it_names() {
        let mut l = KeyLimits {
            rpm: Some(5),
            tokens_per_day: Some(10),
            ..KeyLimits::default()
        };
        l.merge(KeyLimits {
            tpm: Some(7),
            tokens_per_day: Some(20),
            ..KeyLimits::default()
        });
        assert_eq!(
            l,
            KeyLimits {
                rpm: Some(5),
                tpm: Some(7),
                tokens_per_day: Some(20),
                ..KeyLimits::default()
            }
        );
    }
}
