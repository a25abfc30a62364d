//! Tokenizer reconstruction: takes the `tokenizer.*` GGUF metadata of a byte-level BPE model
//! (`tokenizer.ggml.model = gpt2`) and gives an HF `tokenizer.json` (vocabulary, merges, special
//! tokens, and the pre-tokenizer that `tokenizer.ggml.pre` names), a `tokenizer_config.json`
//! (special tokens, chat template) and the special token ids.

use std::collections::HashSet;
use std::str::FromStr;

use serde_json::{json, Map, Value};

use super::config::object;
use super::metadata::Meta;
use super::{GgufError, Result};

/// GPT-2's split pattern with digits kept one by one is what SmolLM2 uses; the ByteLevel
/// pre-tokenizer's own regex is GPT-2's, so SmolLM2 needs only a Digits step before it.
/// Qwen2's split pattern (from its tokenizer.json): single digits, letters with one leading
/// non-letter, punctuation runs with trailing newlines.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split pattern: as Qwen2's, but digits in groups of up to three.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The values of `tokenizer.ggml.pre` this module knows, for error messages.
const KNOWN_PRE: &str = "smollm, qwen2, llama-bpe, llama3, gpt-2, default";

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Special token ids from the GGUF metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TokenIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
    /// End of turn, when the file names one (chat models whose EOS differs from it).
    pub eot: Option<u32>,
}

/// The tokenizer files and facts built from the metadata.
pub(crate) struct TokenizerParts {
    pub tokenizer: Value,
    pub tokenizer_config: Value,
    pub ids: TokenIds,
    /// Number of tokens in the vocabulary.
    pub vocab_len: usize,
}

/// Builds `tokenizer.json` and `tokenizer_config.json` from the metadata, and checks that the
/// `tokenizers` crate loads the result.
pub(crate) fn build(meta: &Meta, context_length: usize) -> Result<TokenizerParts> {
    let err = |message: String| GgufError::Tokenizer {
        path: meta.path().to_path_buf(),
        message,
    };
    let model = meta
        .opt_string("tokenizer.ggml.model")?
        .ok_or_else(|| err("the file has no tokenizer (tokenizer.ggml.model is missing)".into()))?;
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer.ggml.model is '{model}'; only 'gpt2' (byte-level BPE) is supported"
        )));
    }
    let tokens = meta
        .opt_strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| meta.invalid("tokenizer.ggml.tokens", "missing"))?;
    if tokens.is_empty() {
        return Err(meta.invalid("tokenizer.ggml.tokens", "is empty"));
    }
    let types = match meta.opt_ints("tokenizer.ggml.token_type")? {
        Some(types) if types.len() != tokens.len() => {
            return Err(meta.invalid(
                "tokenizer.ggml.token_type",
                format!("has {} entries for {} tokens", types.len(), tokens.len()),
            ))
        }
        Some(types) => types,
        None => vec![1; tokens.len()],
    };
    let merges = meta
        .opt_strings("tokenizer.ggml.merges")?
        .ok_or_else(|| meta.invalid("tokenizer.ggml.merges", "missing"))?;

    let id_of = |key: &str| -> Result<Option<u32>> {
        match meta.opt_u64(key)? {
            None => Ok(None),
            Some(id) if (id as usize) < tokens.len() => Ok(Some(id as u32)),
            Some(id) => Err(meta.invalid(
                key,
                format!("token id {id} is outside the {} tokens", tokens.len()),
            )),
        }
    };
    let ids = TokenIds {
        bos: id_of("tokenizer.ggml.bos_token_id")?,
        eos: id_of("tokenizer.ggml.eos_token_id")?,
        pad: id_of("tokenizer.ggml.padding_token_id")?,
        unk: id_of("tokenizer.ggml.unknown_token_id")?,
        eot: id_of("tokenizer.ggml.eot_token_id")?,
    };
    let add_bos = meta
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false);
    let pre = meta.opt_string("tokenizer.ggml.pre")?;

    let mut vocab = Map::new();
    let mut seen = HashSet::new();
    let mut added_tokens = Vec::new();
    for (id, (token, kind)) in tokens.iter().zip(&types).enumerate() {
        if !seen.insert(*token) {
            return Err(meta.invalid(
                "tokenizer.ggml.tokens",
                format!("token {token:?} appears twice (again at id {id})"),
            ));
        }
        vocab.insert(token.to_string(), json!(id));
        if *kind == TOKEN_TYPE_CONTROL || *kind == TOKEN_TYPE_USER_DEFINED {
            added_tokens.push(json!({
                "id": id,
                "content": token,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": *kind == TOKEN_TYPE_CONTROL,
            }));
        }
    }
    let merge_pairs = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| json!([a, b]))
                .ok_or_else(|| {
                    meta.invalid(
                        "tokenizer.ggml.merges",
                        format!("element {i} ({m:?}) is not two tokens separated by a space"),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;

    let byte_level = |trim_offsets: bool, use_regex: bool| {
        json!({
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": trim_offsets,
            "use_regex": use_regex,
        })
    };
    let split = |pattern: &str| {
        json!({
            "type": "Split",
            "pattern": { "Regex": pattern },
            "behavior": "Isolated",
            "invert": false,
        })
    };
    let (normalizer, pre_tokenizer, ignore_merges) = match pre.as_deref() {
        Some("smollm") => (
            Value::Null,
            json!({
                "type": "Sequence",
                "pretokenizers": [
                    { "type": "Digits", "individual_digits": true },
                    byte_level(true, true),
                ],
            }),
            false,
        ),
        Some("qwen2") => (
            json!({ "type": "NFC" }),
            json!({
                "type": "Sequence",
                "pretokenizers": [split(QWEN2_PATTERN), byte_level(false, false)],
            }),
            false,
        ),
        Some("llama-bpe") | Some("llama3") => (
            Value::Null,
            json!({
                "type": "Sequence",
                "pretokenizers": [split(LLAMA3_PATTERN), byte_level(true, false)],
            }),
            true,
        ),
        None | Some("default") | Some("gpt-2") | Some("gpt2") => {
            (Value::Null, byte_level(true, true), false)
        }
        Some(other) => {
            return Err(meta.invalid(
                "tokenizer.ggml.pre",
                format!("pre-tokenizer '{other}' is not supported (supported: {KNOWN_PRE})"),
            ))
        }
    };

    let post_processor = match (add_bos, ids.bos) {
        (true, Some(bos)) => {
            let bos_text = tokens[bos as usize];
            json!({
                "type": "TemplateProcessing",
                "single": [
                    { "SpecialToken": { "id": bos_text, "type_id": 0 } },
                    { "Sequence": { "id": "A", "type_id": 0 } },
                ],
                "pair": [
                    { "SpecialToken": { "id": bos_text, "type_id": 0 } },
                    { "Sequence": { "id": "A", "type_id": 0 } },
                    { "SpecialToken": { "id": bos_text, "type_id": 1 } },
                    { "Sequence": { "id": "B", "type_id": 1 } },
                ],
                "special_tokens": {
                    bos_text: { "id": bos_text, "ids": [bos], "tokens": [bos_text] },
                },
            })
        }
        _ => json!({
            "type": "ByteLevel",
            "add_prefix_space": true,
            "trim_offsets": false,
            "use_regex": true,
        }),
    };

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": true,
            "trim_offsets": true,
            "use_regex": true,
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": Value::Object(vocab),
            "merges": merge_pairs,
        },
    });
    // A tokenizer.json that the tokenizers crate rejects would only fail later, at load time,
    // far from its cause; loading it here keeps the error next to the metadata that made it.
    let text = serde_json::to_string(&tokenizer).map_err(|e| err(e.to_string()))?;
    tokenizers::Tokenizer::from_str(&text)
        .map_err(|e| err(format!("the rebuilt tokenizer.json does not load: {e}")))?;

    let mut config = object(json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": context_length,
    }));
    for (key, id) in [
        ("bos_token", ids.bos),
        ("eos_token", ids.eos),
        ("pad_token", ids.pad),
        ("unk_token", ids.unk),
    ] {
        if let Some(id) = id {
            config.insert(key.into(), json!(tokens[id as usize]));
        }
    }
    if let Some(template) = meta.opt_string("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(template));
    }

    Ok(TokenizerParts {
        tokenizer,
        tokenizer_config: Value::Object(config),
        ids,
        vocab_len: tokens.len(),
    })
}
