//! Content in the audit trail (`--audit-content`): a request's body and its generated output,
//! encrypted (ChaCha20-Poly1305) with a key of its own per subject (the `X-Inhaus-Subject` the caller
//! names, else the API key's name). Keys live in `DIR/subjects/`, named by the subject's hash (the
//! subject itself is never written). Forgetting a subject (GDPR Art. 17) deletes its key: its content
//! becomes unreadable everywhere at once, while the records and their hash chain stay intact, because
//! the chain covers the ciphertext.
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A subject's id: the first 32 hex digits of its sha256.
pub fn subject_id(subject: &str) -> String {
    crate::digest::sha256_hex(subject.as_bytes())[..32].to_string()
}

/// The subject keys of an audit folder.
pub struct SubjectKeys {
    dir: PathBuf,
}

impl SubjectKeys {
    pub fn new(audit_dir: &Path) -> Self {
        Self {
            dir: audit_dir.join("subjects"),
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }

    fn read(&self, id: &str) -> Option<[u8; 32]> {
        let text = std::fs::read_to_string(self.path(id)).ok()?;
        B64.decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
    }

    /// The subject's key, made on first use (readable by its owner only).
    fn key(&self, id: &str) -> std::io::Result<[u8; 32]> {
        if let Some(k) = self.read(id) {
            return Ok(k);
        }
        std::fs::create_dir_all(&self.dir)?;
        let key: [u8; 32] = rand::random();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        match opts.open(self.path(id)) {
            Ok(mut f) => {
                f.write_all(B64.encode(key).as_bytes())?;
                f.sync_all()?;
                Ok(key)
            }
            // Made meanwhile (by another writer): use that one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self.read(id).ok_or(e),
            Err(e) => Err(e),
        }
    }

    /// Encrypts `plain` for `subject`: `{subject_id, nonce, ciphertext}`.
    pub fn seal(&self, subject: &str, plain: &Value) -> std::io::Result<Value> {
        let id = subject_id(subject);
        let key = self.key(&id)?;
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&key));
        let nonce: [u8; 12] = rand::random();
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), plain.to_string().as_bytes())
            .map_err(|_| std::io::Error::other("encrypting audit content failed"))?;
        Ok(json!({ "subject_id": id, "nonce": B64.encode(nonce), "ciphertext": B64.encode(ct) }))
    }

    /// The content of a record, if its subject's key still exists (`None`: forgotten).
    pub fn open(&self, sealed: &Value) -> Option<Value> {
        let id = sealed["subject_id"].as_str()?;
        let key = self.read(id)?;
        let nonce = B64.decode(sealed["nonce"].as_str()?).ok()?;
        let ct = B64.decode(sealed["ciphertext"].as_str()?).ok()?;
        if nonce.len() != 12 {
            return None;
        }
        let plain = ChaCha20Poly1305::new(Key::from_slice(&key))
            .decrypt(Nonce::from_slice(&nonce), ct.as_slice())
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }

    /// Deletes the subject's key (overwritten first); says whether there was one.
    pub fn forget(&self, subject: &str) -> std::io::Result<bool> {
        let path = self.path(&subject_id(subject));
        if !path.exists() {
            return Ok(false);
        }
        std::fs::write(&path, [0u8; 64])?;
        std::fs::remove_file(&path)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_content_opens_until_its_subject_is_forgotten() {
        let dir = std::env::temp_dir().join(format!("inhaus-subjects-{}", std::process::id()));
        let keys = SubjectKeys::new(&dir);
        let plain = json!({"request": {"messages": [{"content": "Geheimnis"}]}});
        let sealed = keys.seal("kunde-42", &plain).expect("seal");
        let other = keys.seal("kunde-43", &plain).expect("seal");
        assert!(!sealed.to_string().contains("Geheimnis") && !sealed.to_string().contains("kunde"));
        assert_eq!(keys.open(&sealed), Some(plain.clone()));
        assert!(keys.forget("kunde-42").expect("forget"));
        assert_eq!(keys.open(&sealed), None);
        assert_eq!(
            keys.open(&other),
            Some(plain),
            "other subjects are untouched"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
