//! Loading a model for serving or generation. What `--model` names decides the backend:
//! - a catalog alias or a `.gguf` file: the own-kernel CPU forward ([`gguf`]), or the candle decoder
//!   with the matrices kept quantized (`--backend candle`, and on a GPU);
//! - a Hugging Face folder (`config.json`, safetensors, `tokenizer.json`) or a repo id
//!   `org/name[@revision]` resolved through the Hugging Face cache ([`hub`]): the candle decoder on
//!   the chosen device and dtype ([`hf`]).
pub mod gguf;
pub mod hf;
pub mod hub;

use crate::catalog::{self, CatalogError, ResolvedModel};
use crate::chat_template::{ChatTemplate, ChatTemplateError};
use crate::tokenizer::{ModelTokenizer, TokenizerError};
use inhaus_models::{Forward, ModelError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] ChatTemplateError),
    #[error(transparent)]
    Hub(#[from] hub::HubError),
    #[error("{0}")]
    Options(String),
}

/// The weights' element type for the candle backend (`--dtype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DtypeChoice {
    /// f32 on the CPU (candle's CPU matmuls widen half types to f32 anyway); on a GPU the
    /// checkpoint's own dtype (`torch_dtype`), bf16 when it says none.
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

impl std::str::FromStr for DtypeChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => Self::Auto,
            "f32" | "float32" => Self::F32,
            "f16" | "float16" => Self::F16,
            "bf16" | "bfloat16" => Self::Bf16,
            other => return Err(format!("dtype `{other}` (expected auto, f32, f16 or bf16)")),
        })
    }
}

/// Where the candle backend runs (`--device`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(format!("device `{s}` (expected cpu, cuda or cuda:N)")),
            },
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Which forward runs a GGUF file (`--backend`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// The own kernels on the CPU, candle on a GPU.
    #[default]
    Auto,
    /// inhaus's own CPU kernels (GGUF only).
    Native,
    /// The candle decoder (GGUF quantized through candle's quantized matmul; Hugging Face folders
    /// always run on it).
    Candle,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => Self::Auto,
            "native" => Self::Native,
            "candle" => Self::Candle,
            other => {
                return Err(format!(
                    "backend `{other}` (expected auto, native or candle)"
                ))
            }
        })
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    pub dtype: DtypeChoice,
    pub device: DeviceChoice,
    pub backend: BackendChoice,
}

/// Where a served model came from and how it runs (reported by `/v1/models`).
#[derive(Clone, Debug)]
pub struct ModelSource {
    /// `file` (a GGUF file or catalog alias), `folder` (a Hugging Face folder) or `repo` (a repo id).
    pub kind: &'static str,
    /// The file or folder path, or the repo id.
    pub location: String,
    /// The resolved commit of a repo id.
    pub revision: Option<String>,
    /// `gguf` or `safetensors`.
    pub format: &'static str,
    /// The weights' type as run (`f32`, `bf16`, or the GGUF quantization).
    pub dtype: String,
    pub device: String,
}

/// Sampling defaults a checkpoint ships (`generation_config.json`), used where a request sets none.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
}

/// A model ready to run: weights, tokenizer and chat template.
pub struct LoadedModel {
    pub name: String,
    pub resolved: ResolvedModel,
    pub source: ModelSource,
    pub generation_defaults: GenerationDefaults,
    pub model: Forward,
    pub tokenizer: ModelTokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// The weights' quantization (llama.cpp's file-type name, e.g. `Q4_K_M`), when the file says.
    pub quantization: Option<String>,
    /// The hex sha256 of the weights (the files in order): the catalog's (checked when fetched) or
    /// computed on a background thread after loading (empty until then).
    pub weights_sha256: Arc<OnceLock<String>>,
}

/// The weights' sha256: the catalog's, or hashed on a background thread over `files` in order.
pub(crate) fn weights_sha256(
    resolved: &ResolvedModel,
    files: Vec<PathBuf>,
) -> Arc<OnceLock<String>> {
    let cell = Arc::new(OnceLock::new());
    if let Some(e) = resolved.entry.filter(|e| !e.sha256.is_empty()) {
        let _ = cell.set(e.sha256.clone());
        return cell;
    }
    let out = cell.clone();
    let spawned = std::thread::Builder::new()
        .name("weights-sha256".into())
        .spawn(move || {
            let mut h = Sha256::new();
            for path in &files {
                let hashed =
                    std::fs::File::open(path).and_then(|mut f| std::io::copy(&mut f, &mut h));
                if let Err(e) = hashed {
                    tracing::warn!(path = %path.display(), "hashing the weights: {e}");
                    return;
                }
            }
            let _ = out.set(crate::digest::hex(&h.finalize()));
        });
    if let Err(e) = spawned {
        tracing::warn!("hashing the weights: {e}");
    }
    cell
}

/// Whether `dir` is a Hugging Face model folder (as opposed to a sentence-transformers one, which
/// the embeddings path loads).
pub fn is_hf_decoder_folder(dir: &Path) -> bool {
    dir.join("config.json").is_file() && !dir.join("modules.json").is_file() && hf::is_decoder(dir)
}

/// Loads `name` with the default options (CPU, dtype auto).
pub fn load(name: &str) -> Result<LoadedModel, LoadError> {
    load_with(name, &LoadOptions::default())
}

/// A Hugging Face `kind` (folder or repo) runs on the candle decoder: `--backend native` is refused.
fn refuse_native(opts: &LoadOptions, name: &str, kind: &str) -> Result<(), LoadError> {
    if opts.backend == BackendChoice::Native {
        return Err(LoadError::Options(format!(
            "{name} is a Hugging Face {kind}, which runs on the candle backend; --backend native \
             takes a GGUF file"
        )));
    }
    Ok(())
}

/// Loads `name`: a catalog alias, a `.gguf` file, a Hugging Face folder or a repo id.
pub fn load_with(name: &str, opts: &LoadOptions) -> Result<LoadedModel, LoadError> {
    let path = Path::new(name);
    if path.is_dir() {
        refuse_native(opts, name, "folder")?;
        return hf::load(path, name, None, opts);
    }
    if catalog::find(name).is_none() && !path.exists() {
        if let Some(repo) = hub::RepoRef::parse(name) {
            let snapshot = hub::resolve(&repo)?;
            let dir = snapshot.dir.clone();
            refuse_native(opts, name, "repo")?;
            return hf::load(&dir, &repo.id, Some(snapshot), opts);
        }
    }
    let resolved = catalog::resolve(name)?;
    let candle = match (opts.backend, opts.device) {
        (BackendChoice::Native, DeviceChoice::Cpu) => false,
        (BackendChoice::Native, device) => {
            return Err(LoadError::Options(format!(
                "--backend native runs on the CPU; --device {device} needs --backend candle or auto"
            )))
        }
        (BackendChoice::Auto, DeviceChoice::Cpu) => false,
        _ => true,
    };
    gguf::load(resolved, candle.then_some(opts.device))
}
