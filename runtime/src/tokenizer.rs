//! Tokenizers and chat templates: takes an HF `tokenizer.json` (plus the optional
//! `tokenizer_config.json`), or builds a char-level tokenizer in code for `tiny()` models, and
//! gives prompt token ids (raw, or rendered with the model's Jinja chat template) and decoded
//! text.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use serde_json::{json, Value};

use crate::model::{ModelError, Result};

/// One turn of a conversation, as chat templates read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// How a conversation becomes model input text.
#[derive(Debug, Clone)]
pub enum ChatTemplate {
    /// No chat template: a lone user turn goes in as it is and the tokenizer's special tokens
    /// (a BOS, say) are added; a conversation of more turns cannot be written.
    Raw,
    /// The model's own Jinja template, rendered as Hugging Face `apply_chat_template` does.
    Jinja(Arc<JinjaTemplate>),
    /// The model names a template that does not compile; every render says why.
    Broken(String),
}

impl PartialEq for ChatTemplate {
    fn eq(&self, other: &ChatTemplate) -> bool {
        match (self, other) {
            (ChatTemplate::Raw, ChatTemplate::Raw) => true,
            (ChatTemplate::Jinja(a), ChatTemplate::Jinja(b)) => a.source == b.source,
            (ChatTemplate::Broken(a), ChatTemplate::Broken(b)) => a == b,
            _ => false,
        }
    }
}

/// A compiled chat template with the special tokens its context names.
pub struct JinjaTemplate {
    source: String,
    env: minijinja::Environment<'static>,
    /// `bos_token`, `eos_token`, ... from `tokenizer_config.json`.
    tokens: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for JinjaTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JinjaTemplate")
            .field("source", &self.source)
            .finish()
    }
}

/// The template text a `tokenizer_config.json` holds: `chat_template` as a string, or the
/// one named `default` in a list of named templates.
pub fn template_source(tokenizer_config: Option<&Value>) -> Option<String> {
    match tokenizer_config?.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

/// Jinja's `raise_exception(message)`, with which templates refuse a conversation.
fn raise_exception(message: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        message,
    ))
}

/// Python's `json.dumps` layout (`", "` and `": "` between items), as transformers' `tojson`
/// writes it; minijinja's own `tojson` is compact and escapes HTML characters.
struct PythonJson;

/// `", "` before every item of an array or object but the first.
fn item_separator<W: ?Sized + std::io::Write>(w: &mut W, first: bool) -> std::io::Result<()> {
    if first {
        Ok(())
    } else {
        w.write_all(b", ")
    }
}

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(w, first)
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        item_separator(w, first)
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// The `tojson` filter of transformers' template environment: `indent` as in `json.dumps`.
fn tojson(
    value: minijinja::Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let bad = |e: serde_json::Error| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    };
    let mut out = Vec::new();
    match indent {
        Some(n) => {
            let pad = vec![b' '; n];
            let fmt = serde_json::ser::PrettyFormatter::with_indent(&pad);
            serde::Serialize::serialize(
                &value,
                &mut serde_json::Serializer::with_formatter(&mut out, fmt),
            )
            .map_err(bad)?
        }
        None => serde::Serialize::serialize(
            &value,
            &mut serde_json::Serializer::with_formatter(&mut out, PythonJson),
        )
        .map_err(bad)?,
    }
    Ok(minijinja::Value::from_safe_string(
        String::from_utf8_lossy(&out).into_owned(),
    ))
}

/// `strftime_now(format)`: the current UTC time in the `%Y %m %d %b %B %H %M %S %%` subset of
/// strftime that chat templates use (Llama 3.1 writes today's date with `"%d %b %Y"`).
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(secs, &format)
}

fn strftime(secs: i64, format: &str) -> std::result::Result<String, minijinja::Error> {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    // Days since 1970-01-01 to a civil date (H. Hinnant's `civil_from_days`).
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('H') => out.push_str(&format!("{:02}", sod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", sod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", sod % 60)),
            Some('%') => out.push('%'),
            other => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now does not know `%{}`",
                        other.map(String::from).unwrap_or_default()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

/// The special-token names a template's context carries, as transformers passes them.
const TEMPLATE_TOKENS: [&str; 4] = ["bos_token", "eos_token", "unk_token", "pad_token"];

impl ChatTemplate {
    /// The template a `tokenizer_config.json` describes: its `chat_template` compiled, raw
    /// when it has none, broken (with the reason) when the template does not compile.
    pub fn from_config(tokenizer_config: Option<&Value>) -> ChatTemplate {
        match template_source(tokenizer_config) {
            None => ChatTemplate::Raw,
            Some(source) => match JinjaTemplate::new(source, tokenizer_config) {
                Ok(t) => ChatTemplate::Jinja(Arc::new(t)),
                Err(why) => ChatTemplate::Broken(why),
            },
        }
    }

    /// The model input text of a conversation; with `add_generation_prompt` it ends where the
    /// assistant's answer begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> std::result::Result<String, String> {
        match self {
            ChatTemplate::Raw => match messages {
                [m] if m.role == "user" => Ok(m.content.clone()),
                _ => Err(
                    "the model has no chat template (`chat_template` in tokenizer_config.json), \
                     so only a lone user prompt can be written; a system prompt or a \
                     conversation cannot"
                        .to_string(),
                ),
            },
            ChatTemplate::Jinja(t) => t.render(messages, add_generation_prompt),
            ChatTemplate::Broken(why) => Err(why.clone()),
        }
    }

    /// The model input text for one user turn, ending where the assistant's answer begins.
    pub fn apply(&self, user: &str) -> std::result::Result<String, String> {
        self.render(&[ChatMessage::new("user", user)], true)
    }

    /// The model input text of a prompt: the turns of `context` (a system prompt, earlier
    /// turns), then the user's `prompt`, up to where the assistant's answer begins. Training
    /// renders every prompt this way, and `recapc check` renders the first rows of each source
    /// this way before a run, so the two fail alike.
    pub fn render_prompt(
        &self,
        context: &[ChatMessage],
        prompt: &str,
    ) -> std::result::Result<String, String> {
        let user = ChatMessage::new("user", prompt);
        if context.is_empty() {
            self.render(std::slice::from_ref(&user), true)
        } else {
            let mut turns = context.to_vec();
            turns.push(user);
            self.render(&turns, true)
        }
    }

    /// The chat template of a Hugging Face model or tokenizer directory, read from its
    /// `tokenizer_config.json` (or the `chat_template.jinja` beside it) without the tokenizer
    /// itself, as [`TextTokenizer::from_dir`] reads it: what `recapc check` renders the first
    /// rows of each source with, without loading the model.
    pub fn from_dir(dir: &Path) -> Result<ChatTemplate> {
        let config = with_template_file(dir, read_tokenizer_config(dir)?)?;
        Ok(ChatTemplate::from_config(config.as_ref()))
    }

    /// Whether the tokenizer's own special tokens are added when encoding templated text
    /// (transformers adds them for raw prompts, not for rendered chat templates).
    pub fn add_special_tokens(&self) -> bool {
        matches!(self, ChatTemplate::Raw)
    }
}

/// Renders a Jinja error with its cause chain (a template's own `raise_exception` message is
/// in the detail).
fn jinja_error(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

impl JinjaTemplate {
    /// Compiles `source` in an environment set up as transformers sets up its own: blocks trim
    /// their newline and leading space, loop controls, Python's string and dict methods,
    /// `raise_exception`, `strftime_now` and a `json.dumps`-style `tojson`.
    pub fn new(
        source: String,
        tokenizer_config: Option<&Value>,
    ) -> std::result::Result<JinjaTemplate, String> {
        let mut env = minijinja::Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| jinja_error(&e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat_template", source.clone())
            .map_err(|e| format!("the chat template does not compile: {}", jinja_error(&e)))?;
        let tokens = TEMPLATE_TOKENS
            .iter()
            .filter_map(|&k| token_string(tokenizer_config, k).map(|v| (k, v)))
            .collect();
        Ok(JinjaTemplate {
            source,
            env,
            tokens,
        })
    }

    /// The template's text.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> std::result::Result<String, String> {
        let template = self
            .env
            .get_template("chat_template")
            .map_err(|e| jinja_error(&e))?;
        let mut ctx: std::collections::BTreeMap<&str, minijinja::Value> = self
            .tokens
            .iter()
            .map(|(k, v)| (*k, minijinja::Value::from(v.as_str())))
            .collect();
        ctx.insert(
            "messages",
            minijinja::Value::from(minijinja::value::Serde(messages)),
        );
        ctx.insert(
            "add_generation_prompt",
            minijinja::Value::from(add_generation_prompt),
        );
        template
            .render(ctx)
            .map_err(|e| format!("the chat template fails: {}", jinja_error(&e)))
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

/// The largest `chat_template.jinja` read: templates are a few kilobytes.
const MAX_TEMPLATE_BYTES: u64 = 1 << 20;

/// `config` with the `chat_template` of the directory's `chat_template.jinja`, where newer
/// transformers saves it, when the config itself holds none.
fn with_template_file(dir: &Path, config: Option<Value>) -> Result<Option<Value>> {
    if template_source(config.as_ref()).is_some() {
        return Ok(config);
    }
    let path = dir.join("chat_template.jinja");
    let Ok(meta) = std::fs::metadata(&path) else {
        return Ok(config);
    };
    if !meta.is_file() || meta.len() > MAX_TEMPLATE_BYTES {
        return Err(ModelError::Tokenizer(format!(
            "{} is not a chat template file of at most {MAX_TEMPLATE_BYTES} bytes",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let mut map = match config {
        Some(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    map.insert("chat_template".into(), Value::String(text));
    Ok(Some(Value::Object(map)))
}

/// The `tokenizer_config.json` of a directory, when it has one.
fn read_tokenizer_config(dir: &Path) -> Result<Option<Value>> {
    let path = dir.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
    let config = serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.clone(),
        source,
    })?;
    Ok(Some(config))
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
        let template = ChatTemplate::from_config(config.as_ref());
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
        let config = read_tokenizer_config(dir)?;
        Ok(TextTokenizer::new(inner, with_template_file(dir, config)?))
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
        self.encode_chat(&[], user)
    }

    /// Token ids of a conversation, the turns of `context` (a system prompt, earlier turns)
    /// and then the user's `prompt`, rendered with this tokenizer's chat template up to where
    /// the assistant's answer begins.
    pub fn encode_chat(&self, context: &[ChatMessage], prompt: &str) -> Result<Vec<u32>> {
        let text = self
            .template
            .render_prompt(context, prompt)
            .map_err(ModelError::Tokenizer)?;
        self.encode(&text, self.template.add_special_tokens())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn template(config: &str) -> ChatTemplate {
        let config: Value = serde_json::from_str(config).unwrap();
        ChatTemplate::from_config(Some(&config))
    }

    fn qwen() -> ChatTemplate {
        template(include_str!(
            "../tests/data/chat/qwen2.5/tokenizer_config.json"
        ))
    }

    fn llama3() -> ChatTemplate {
        template(include_str!(
            "../tests/data/chat/llama3/tokenizer_config.json"
        ))
    }

    fn conversation() -> Vec<ChatMessage> {
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", " 2+2? "),
            ChatMessage::new("assistant", "4"),
            ChatMessage::new("user", "3+3?"),
        ]
    }

    // The expected strings are what transformers' template environment (Jinja2 with
    // trim_blocks, lstrip_blocks and loop controls) renders for the same fixtures.

    #[test]
    fn renders_a_qwen25_chatml_template() {
        assert_eq!(
            qwen().apply("Hi?").unwrap(),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful \
             assistant.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            qwen().render(&conversation(), true).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n 2+2? <|im_end|>\n\
             <|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\n3+3?<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        assert!(!qwen().add_special_tokens());
    }

    #[test]
    fn renders_a_llama3_template_with_its_bos_token() {
        assert_eq!(
            llama3().apply("Hi?").unwrap(),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(
            llama3().render(&conversation(), false).unwrap(),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\n3+3?<|eot_id|>"
        );
    }

    #[test]
    fn templates_refuse_and_fail_with_their_reasons() {
        let strict = template(
            r#"{"chat_template": "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user turn') }}{% endif %}{{ messages[0].content }}"}"#,
        );
        let err = strict.render(&conversation(), true).unwrap_err();
        assert!(
            err.contains("Conversations must start with a user turn"),
            "{err}"
        );
        assert_eq!(strict.apply("x").unwrap(), "x");
        let broken = template(r#"{"chat_template": "{% for m in messages %}{{ m.content }}"}"#);
        assert!(matches!(broken, ChatTemplate::Broken(_)));
        let err = broken.apply("x").unwrap_err();
        assert!(err.contains("does not compile"), "{err}");
        // Without a template a lone user turn is the text itself; more turns cannot be written.
        assert_eq!(
            ChatTemplate::from_config(None).apply("59+63=").unwrap(),
            "59+63="
        );
        assert!(ChatTemplate::Raw.render(&conversation(), true).is_err());
    }

    #[test]
    fn tojson_and_strftime_write_as_python_does() {
        let t = template(
            r#"{"chat_template": "{{ {'a': [1, 'x<'], 'b': none} | tojson }} {{ strftime_now('%Y') | length }}"}"#,
        );
        assert_eq!(t.apply("").unwrap(), r#"{"a": [1, "x<"], "b": null} 4"#);
        // 2024-12-05 00:00:00 UTC, and a leap day.
        assert_eq!(strftime(1_733_356_800, "%d %b %Y").unwrap(), "05 Dec 2024");
        assert_eq!(
            strftime(951_782_400 + 3723, "%Y-%m-%d %H:%M:%S %B %%").unwrap(),
            "2000-02-29 01:02:03 February %"
        );
        assert!(strftime(0, "%Q").is_err());
    }

    /// A directory's template is read without its tokenizer: from `tokenizer_config.json`,
    /// else from `chat_template.jinja`, else there is none; and it renders prompts as training
    /// encodes them.
    #[test]
    fn a_directory_template_is_read_without_the_tokenizer() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ChatTemplate::from_dir(dir.path()).unwrap(),
            ChatTemplate::Raw
        );
        std::fs::write(
            dir.path().join("chat_template.jinja"),
            "[{{ messages[-1].content }}]",
        )
        .unwrap();
        let jinja = ChatTemplate::from_dir(dir.path()).unwrap();
        assert_eq!(jinja.render_prompt(&[], "x").unwrap(), "[x]");
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            include_str!("../tests/data/chat/qwen2.5/tokenizer_config.json"),
        )
        .unwrap();
        let qwen_dir = ChatTemplate::from_dir(dir.path()).unwrap();
        assert_eq!(qwen_dir, qwen());
        let context = [ChatMessage::new("system", "Be brief.")];
        assert_eq!(
            qwen_dir.render_prompt(&context, "Hi?").unwrap(),
            qwen()
                .render(&[context[0].clone(), ChatMessage::new("user", "Hi?")], true)
                .unwrap()
        );
        assert!(ChatTemplate::Raw.render_prompt(&context, "Hi?").is_err());
        std::fs::write(dir.path().join("tokenizer_config.json"), "{").unwrap();
        assert!(ChatTemplate::from_dir(dir.path()).is_err());
    }

    #[test]
    fn named_templates_pick_the_default() {
        let config = serde_json::json!({"chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ messages[0].content }}!"}
        ]});
        assert_eq!(
            ChatTemplate::from_config(Some(&config))
                .apply("hi")
                .unwrap(),
            "hi!"
        );
    }
}
