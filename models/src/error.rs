//! Errors of model loading and of the forward pass.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid GGUF file: {0}")]
    Gguf(String),
    #[error("GGUF metadata key `{0}` is missing or has the wrong type")]
    Metadata(String),
    #[error("tensor `{0}` is missing from the model file")]
    MissingTensor(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("model backend: {0}")]
    Backend(String),
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
}
