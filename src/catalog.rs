//! The model catalog (`catalog.toml`, compiled in): aliases, files, checksums, provenance, and how a
//! `--model` argument resolves to a file on disk.
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use thiserror::Error;

const CATALOG_TOML: &str = include_str!("../catalog.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    pub package: String,
    pub version: String,
    pub path: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogEntry {
    pub alias: String,
    pub family: String,
    pub format: String,
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
    pub license: String,
    pub source: String,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub task: Option<String>,
    #[serde(default)]
    pub dir: Option<String>,
    pub parts: Vec<Part>,
}

impl CatalogEntry {
    pub fn is_chat(&self) -> bool {
        self.task.as_deref().unwrap_or("chat") == "chat"
    }
    /// Where the entry's main file lives under `models_dir`.
    pub fn path_in(&self, models_dir: &Path) -> PathBuf {
        match &self.dir {
            Some(d) => models_dir.join(d).join(&self.file),
            None => models_dir.join(&self.file),
        }
    }
}

#[derive(Deserialize)]
struct CatalogFile {
    model: Vec<CatalogEntry>,
}

#[derive(Debug, Error)]
pub enum CatalogError {
    #[error("model `{alias}` is not downloaded (expected {path}); fetch it with: scripts/fetch-models.sh {alias}")]
    NotFetched { alias: String, path: String },
    #[error("unknown model `{0}`: not a catalog alias ({1}) and not an existing .gguf file")]
    Unknown(String, String),
}

/// Every catalog entry.
pub fn entries() -> &'static [CatalogEntry] {
    static CATALOG: OnceLock<Vec<CatalogEntry>> = OnceLock::new();
    CATALOG.get_or_init(|| match toml::from_str::<CatalogFile>(CATALOG_TOML) {
        Ok(c) => c.model,
        // The catalog is compiled in and checked by a test; an empty one only disables aliases.
        Err(e) => {
            tracing::error!("built-in catalog is invalid: {e}");
            Vec::new()
        }
    })
}

pub fn find(alias: &str) -> Option<&'static CatalogEntry> {
    entries().iter().find(|e| e.alias == alias)
}

/// The default chat model's alias.
pub fn default_chat_alias() -> &'static str {
    entries()
        .iter()
        .find(|e| e.default && e.is_chat())
        .map(|e| e.alias.as_str())
        .unwrap_or("qwen2.5-coder-0.5b-instruct")
}

/// The model folder: `$INHAUS_MODELS`, else `~/.cache/inhaus/models`.
/// The models `inhaus serve` serves when none are named: every catalog entry marked default.
pub fn default_serve_aliases() -> Vec<String> {
    entries()
        .iter()
        .filter(|e| e.default)
        .map(|e| e.alias.clone())
        .collect()
}

pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("INHAUS_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("inhaus").join("models")
}

/// A `--model` argument resolved to a file.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// The name the model is served and reported under.
    pub name: String,
    pub path: PathBuf,
    pub entry: Option<&'static CatalogEntry>,
}

/// Resolves a catalog alias or a path to a `.gguf` file.
pub fn resolve(name: &str) -> Result<ResolvedModel, CatalogError> {
    if let Some(entry) = find(name) {
        let path = entry.path_in(&models_dir());
        if !path.is_file() {
            return Err(CatalogError::NotFetched {
                alias: name.into(),
                path: path.display().to_string(),
            });
        }
        return Ok(ResolvedModel {
            name: name.into(),
            path,
            entry: Some(entry),
        });
    }
    let path = PathBuf::from(name);
    if path.is_file() {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.into());
        let entry = entries().iter().find(|e| {
            path.file_name()
                .map(|f| f == e.file.as_str())
                .unwrap_or(false)
        });
        return Ok(ResolvedModel {
            name: entry.map(|e| e.alias.clone()).unwrap_or(stem),
            path,
            entry,
        });
    }
    let aliases: Vec<&str> = entries().iter().map(|e| e.alias.as_str()).collect();
    Err(CatalogError::Unknown(name.into(), aliases.join(", ")))
}
