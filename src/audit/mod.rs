//! The AI Act audit trail (`--audit-log DIR`, Art. 12/26): one append-only JSON Lines record per
//! request (time, request id, key name, client address, model and its weights' sha256, endpoint,
//! token counts, finish reason, latency, status), and no prompt or output unless asked for. Records are
//! hash-chained: each carries the hash of the one before (`prev`) and its own (`hash`, the sha256 of
//! `prev` and the record's canonical JSON without `hash`), across files, so that an edited, removed
//! or inserted record breaks the chain where it is. `inhaus audit verify DIR` checks it; a record
//! torn by a crash (`kill -9`) is reported as a torn tail, not as tampering. With `--audit-content`,
//! requests and outputs are kept too, encrypted per subject (`content`), and erasable.
pub mod content;
pub mod writer;

use crate::provenance::canonical_json;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of a record (`hash` itself left out) chained to `prev`.
pub fn record_hash(record: &Value, prev: &str) -> String {
    let mut r = record.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("hash");
    }
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(canonical_json(&r).as_bytes());
    crate::digest::hex(&h.finalize())
}

/// The audit files of a folder, oldest first (their names sort by date and number).
pub fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    v.sort();
    Ok(v)
}

#[derive(Debug, Error, PartialEq)]
pub enum VerifyError {
    #[error("reading {0}: {1}")]
    Read(String, String),
    #[error("{file}:{line}: not a record ({why})")]
    Garbled {
        file: String,
        line: usize,
        why: String,
    },
    #[error("{file}:{line}: record {seq} does not follow the record before it (its `prev` is not that record's hash): a record was removed, inserted or reordered here")]
    Broken { file: String, line: usize, seq: u64 },
    #[error("{file}:{line}: record {seq} was changed after it was written (its hash does not match its content)")]
    Edited { file: String, line: usize, seq: u64 },
}

/// What a successful verification found.
#[derive(Debug, Default, PartialEq)]
pub struct Verified {
    pub records: u64,
    pub files: usize,
    /// Files whose last line was cut short by a crash (the record being written when it died).
    pub torn_tails: Vec<String>,
    /// The hash of the last record (what the next one will chain to).
    pub last_hash: String,
}

/// Checks the chain of every record in `dir`.
pub fn verify(dir: &Path) -> Result<Verified, VerifyError> {
    let read_err =
        |p: &Path, e: std::io::Error| VerifyError::Read(p.display().to_string(), e.to_string());
    let mut out = Verified {
        last_hash: GENESIS.to_string(),
        ..Verified::default()
    };
    let list = files(dir).map_err(|e| read_err(dir, e))?;
    out.files = list.len();
    for path in list {
        let text = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
        let file = path.display().to_string();
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let last = i + 1 == lines.len();
            let parsed: Result<Value, _> = serde_json::from_str(line);
            let record = match parsed {
                Ok(v) if v.is_object() => v,
                // A partial last line: the record a crash cut short.
                _ if last && !complete => {
                    out.torn_tails.push(file.clone());
                    break;
                }
                other => {
                    return Err(VerifyError::Garbled {
                        file,
                        line: i + 1,
                        why: match other {
                            Ok(_) => "not an object".into(),
                            Err(e) => e.to_string(),
                        },
                    })
                }
            };
            let seq = record["seq"].as_u64().unwrap_or(0);
            if record["prev"].as_str() != Some(out.last_hash.as_str()) {
                return Err(VerifyError::Broken {
                    file,
                    line: i + 1,
                    seq,
                });
            }
            let hash = record_hash(&record, &out.last_hash);
            if record["hash"].as_str() != Some(hash.as_str()) {
                return Err(VerifyError::Edited {
                    file,
                    line: i + 1,
                    seq,
                });
            }
            out.last_hash = hash;
            out.records += 1;
        }
    }
    Ok(out)
}
