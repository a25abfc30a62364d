//! Tokenizers and chat templates: takes an HF `tokenizer.json` (plus the optional
//! `tokenizer_config.json`), or builds a char-level tokenizer in code for `tiny()` models, and
//! gives prompt token ids (raw or wrapped in a ChatML chat template) and decoded text.

use std::path::Path;

use serde_json::{json, Value};

use crate::model::{ModelError, Result};

/// How a user prompt becomes model input text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// The prompt as is; the tokenizer's special tokens (a BOS, say) are added.
    Raw,
    /// ChatML (Qwen, SmolLM2): `<|im_start|>system\n..<|im_end|>\n<|im_start|>user\n..<|im_end|>\n
    /// <|im_start|>assistant\n`, the system turn only when `system` is set.
    ChatMl { system: Option<String> },
}

/// The system prompt Qwen2.5's template inserts when the conversation has none.
pub const QWEN_DEFAULT_SYSTEM: &str =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
/// The system prompt SmolLM2-Instruct's template inserts when the conversation has none.
pub const SMOLLM2_DEFAULT_SYSTEM: &str =
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

impl ChatTemplate {
    /// ChatML with Qwen2.5's default system prompt.
    pub fn qwen() -> ChatTemplate {
        ChatTemplate::ChatMl {
            system: Some(QWEN_DEFAULT_SYSTEM.to_string()),
        }
    }

    /// ChatML with SmolLM2's default system prompt.
    pub fn smollm2() -> ChatTemplate {
        ChatTemplate::ChatMl {
            system: Some(SMOLLM2_DEFAULT_SYSTEM.to_string()),
        }
    }

    /// Picks the template a `tokenizer_config.json` describes: ChatML when its `chat_template`
    /// uses `<|im_start|>` (with the default system prompt of Qwen or SmolLM2 when the template
    /// text carries one), raw otherwise.
    pub fn detect(tokenizer_config: Option<&Value>) -> ChatTemplate {
        let template = tokenizer_config
            .and_then(|c| c.get("chat_template"))
            .and_then(Value::as_str)
            .unwrap_or("");
        if !template.contains("<|im_start|>") {
            return ChatTemplate::Raw;
        }
        if template.contains(QWEN_DEFAULT_SYSTEM) {
            ChatTemplate::qwen()
        } else if template.contains(SMOLLM2_DEFAULT_SYSTEM) {
            ChatTemplate::smollm2()
        } else {
            ChatTemplate::ChatMl { system: None }
        }
    }

    /// The model input text for one user turn, ending where the assistant's answer begins.
    pub fn apply(&self, user: &str) -> String {
        match self {
            ChatTemplate::Raw => user.to_string(),
            ChatTemplate::ChatMl { system } => {
                let mut s = String::new();
                if let Some(sys) = system {
                    s.push_str("<|im_start|>system\n");
                    s.push_str(sys);
                    s.push_str("<|im_end|>\n");
                }
                s.push_str("<|im_start|>user\n");
                s.push_str(user);
                s.push_str("<|im_end|>\n<|im_start|>assistant\n");
                s
            }
        }
    }

    /// Whether the tokenizer's own special tokens are added when encoding templated text
    /// (transformers adds them for raw prompts, not for rendered chat templates).
    pub fn add_special_tokens(&self) -> bool {
        matches!(self, ChatTemplate::Raw)
    }
}

/// A tokenizer with the facts generation needs: EOS ids, the pad id and the chat template.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// The `tokenizer_config.json` object, written back into checkpoints.
    config: Option<Value>,
    pub template: ChatTemplate,
    pub eos_ids: Vec<u32>,
    pub pad_id: u32,
}

fn tok_err(context: &str, e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(format!("{context}: {e}"))
}

/// A special-token entry of tokenizer_config.json: a string or `{"content": ...}`.
fn token_string(config: Option<&Value>, key: &str) -> Option<String> {
    let v = config?.get(key)?;
    v.as_str()
        .map(str::to_string)
        .or_else(|| v.get("content").and_then(Value::as_str).map(str::to_string))
}

impl TextTokenizer {
    /// Wraps a tokenizer; EOS and pad come from `config` (tokenizer_config.json) when given,
    /// else from common special-token names.
    pub fn new(inner: tokenizers::Tokenizer, config: Option<Value>) -> TextTokenizer {
        let id = |s: &str| inner.token_to_id(s);
        let mut eos_ids = Vec::new();
        if let Some(e) = token_string(config.as_ref(), "eos_token").and_then(|s| id(&s)) {
            eos_ids.push(e);
        }
        for name in ["<|im_end|>", "<|endoftext|>", "<eos>", "</s>"] {
            if eos_ids.is_empty() {
                if let Some(e) = id(name) {
                    eos_ids.push(e);
                }
            }
        }
        let pad_id = token_string(config.as_ref(), "pad_token")
            .and_then(|s| id(&s))
            .or_else(|| id("<pad>"))
            .or_else(|| id("<|endoftext|>"))
            .or_else(|| eos_ids.first().copied())
            .unwrap_or(0);
        let template = ChatTemplate::detect(config.as_ref());
        TextTokenizer {
            inner,
            config,
            template,
            eos_ids,
            pad_id,
        }
    }

    /// Reads `tokenizer.json` and, when present, `tokenizer_config.json` from an HF directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<TextTokenizer> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| tok_err(&path.display().to_string(), e))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let config = if cfg_path.exists() {
            let text =
                std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
            Some(
                serde_json::from_str(&text).map_err(|source| ModelError::Json {
                    path: cfg_path.clone(),
                    source,
                })?,
            )
        } else {
            None
        };
        Ok(TextTokenizer::new(inner, config))
    }

    /// Parses a `tokenizer.json` document held in memory.
    pub fn from_json_str(json: &str) -> Result<TextTokenizer> {
        let inner = tokenizers::Tokenizer::from_bytes(json.as_bytes())
            .map_err(|e| tok_err("tokenizer JSON", e))?;
        Ok(TextTokenizer::new(inner, None))
    }

    /// A char-level tokenizer: ids 0-3 are `<pad>`, `<bos>`, `<eos>`, `<unk>`, then one id per
    /// distinct char of `chars` in order; encoding prepends `<bos>`. Built in code, so tests and
    /// offline templates need no files.
    pub fn char_level(chars: &str) -> Result<TextTokenizer> {
        let mut vocab = serde_json::Map::new();
        for (i, s) in ["<pad>", "<bos>", "<eos>", "<unk>"].iter().enumerate() {
            vocab.insert(s.to_string(), json!(i));
        }
        for ch in chars.chars() {
            let key = ch.to_string();
            if !vocab.contains_key(&key) {
                let next = vocab.len();
                vocab.insert(key, json!(next));
            }
        }
        let added: Vec<Value> = ["<pad>", "<bos>", "<eos>", "<unk>"]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": null,
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": "<bos>", "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<bos>": {"id": "<bos>", "ids": [1], "tokens": ["<bos>"]}}
            },
            "decoder": {"type": "Fuse"},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": "<unk>",
                "continuing_subword_prefix": null, "end_of_word_suffix": null,
                "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": []
            }
        });
        let mut tok = TextTokenizer::from_json_str(&doc.to_string())?;
        tok.config = Some(json!({
            "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
            "unk_token": "<unk>", "padding_side": "left"
        }));
        tok.eos_ids = vec![2];
        tok.pad_id = 0;
        Ok(tok)
    }

    /// The char-level vocabulary of the arithmetic fixture (56 ids, the same as
    /// `bench/fixture-tiny/tokenizer.json`).
    pub fn arithmetic() -> Result<TextTokenizer> {
        TextTokenizer::char_level("0123456789+-*= abcdefghijklmnopqrstuvwxyz.,:;!?()'\"/")
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| tok_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of a user prompt rendered with this tokenizer's chat template.
    pub fn encode_prompt(&self, user: &str) -> Result<Vec<u32>> {
        self.encode(
            &self.template.apply(user),
            self.template.add_special_tokens(),
        )
    }

    /// Text of `ids`, special tokens left out when `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| tok_err("decode", e))
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` into `dir`.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        self.inner
            .save(&path, true)
            .map_err(|e| tok_err(&path.display().to_string(), e))?;
        let mut cfg = match &self.config {
            Some(Value::Object(m)) => m.clone(),
            _ => serde_json::Map::new(),
        };
        if let Some(eos) = self
            .eos_ids
            .first()
            .and_then(|&e| self.inner.id_to_token(e))
        {
            cfg.entry("eos_token").or_insert(json!(eos));
        }
        if let Some(pad) = self.inner.id_to_token(self.pad_id) {
            cfg.entry("pad_token").or_insert(json!(pad));
        }
        cfg.entry("tokenizer_class")
            .or_insert(json!("PreTrainedTokenizerFast"));
        let cfg_path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&Value::Object(cfg)).expect("JSON of a map");
        std::fs::write(&cfg_path, text).map_err(|e| ModelError::io(&cfg_path, e))
    }
}
