//! The error type of the model layer: takes failures from file IO, JSON, safetensors, candle and
//! the tokenizer, gives one enum whose messages name the file, field or tensor involved, so a
//! malformed checkpoint is reported in plain words instead of a panic.

use std::path::PathBuf;

/// Everything that can go wrong while loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: unknown architecture {found:?}; supported: Qwen2ForCausalLM (model_type qwen2), LlamaForCausalLM (model_type llama)")]
    UnknownArchitecture { path: PathBuf, found: String },
    #[error(
        "{path}: not a valid safetensors file ({message}); the file may be truncated or corrupt"
    )]
    Safetensors { path: PathBuf, message: String },
    #[error("tensor `{tensor}` is missing from {path}")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error(
        "{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?} from the config"
    )]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: tensor `{tensor}`: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Results of the model layer.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        ModelError::Config {
            path: path.into(),
            message: message.into(),
        }
    }
}
