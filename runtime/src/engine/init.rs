//! The policy of an `init(config, ...)` model: takes the plan's config path, seed, dtype and
//! optional tokenizer, gives the model with seeded random weights and its tokenizer, after the
//! checks that make a wrong config an error rather than an abort (the size bound of
//! [`crate::model::init::check_size`], which the config goes through as it is read, and a
//! tokenizer whose vocabulary must fit the config's `vocab_size`).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};

use crate::model::{Model, ModelConfig};
use crate::tokenizer::TextTokenizer;

/// Builds the policy `name` from the config at `config` (resolved), with the tokenizer at
/// `tokenizer` (a `tokenizer.json`, a directory holding one, or a GGUF file whose metadata
/// holds one) or the character-level one. Master weights are f32; `dtype` is the compute
/// dtype, which only pays on CUDA, as for `hf`.
pub(super) fn build(
    name: &str,
    config: &Path,
    tokenizer: Option<&Path>,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> Result<(Model, TextTokenizer)> {
    let mut cfg = ModelConfig::from_file(config)
        .with_context(|| format!("model `{name}`: init(\"{}\")", config.display()))?;
    let tok = match tokenizer {
        Some(p) => self::tokenizer(name, p)?,
        None => TextTokenizer::arithmetic()?,
    };
    if tok.vocab_size() > cfg.vocab_size {
        bail!(
            "model `{name}`: the tokenizer has {} tokens, more than the {} rows (vocab_size) \
             of {}; give a tokenizer made for this config",
            tok.vocab_size(),
            cfg.vocab_size,
            config.display()
        );
    }
    // The character-level tokenizer ends and pads with its own tokens, not the config's.
    if tokenizer.is_none() {
        cfg.eos_token_ids = tok.eos_ids.clone();
        cfg.pad_token_id = Some(tok.pad_id);
    }
    let mut model = Model::from_config_seeded(&cfg, seed, DType::F32, device)
        .with_context(|| format!("model `{name}`: building {}", config.display()))?;
    if dtype != DType::F32 && device.is_cuda() {
        model.train_in(dtype)?;
    }
    Ok((model, tok))
}

/// The tokenizer at `path`: a GGUF file's (from its metadata, its tensors unread), or a
/// `tokenizer.json` or a directory holding one.
pub(super) fn tokenizer(name: &str, path: &Path) -> Result<TextTokenizer> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        let (json, tokenizer_config) = crate::gguf::read_tokenizer(path)
            .with_context(|| format!("model `{name}`: the tokenizer in {}", path.display()))?;
        let inner = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes())
            .map_err(|e| anyhow!("model `{name}`: the tokenizer in {}: {e}", path.display()))?;
        return Ok(TextTokenizer::new(inner, Some(tokenizer_config)));
    }
    super::load_tokenizer(path)
        .with_context(|| format!("model `{name}`: tokenizer {}", path.display()))
}
