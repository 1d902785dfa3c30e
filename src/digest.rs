//! Hex digests: the lowercase hex of bytes, and the sha256 of bytes as hex (weights, keys, audit
//! records, provenance all name things by it).
use sha2::{Digest, Sha256};

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}
