//! End-to-end GGUF tests on the real models that `scripts/fetch-models.sh` puts in the cache
//! (`$RECAP_CACHE`, else `.cache/models/` in the repository root): import the GGUF file into an
//! HF directory, load it with recap's loader and answer a question by greedy ChatML generation.
//! Each test prints a notice and passes when its file is not in the cache, so a machine without
//! the downloads still runs the rest of the suite; CI fetches SmolLM2 first.

use std::path::PathBuf;

use candle_core::Device;
use recap_runtime::generate::{generate, SamplingConfig};
use recap_runtime::gguf;
use recap_runtime::model::load_hf_dir;
use recap_runtime::tokenizer::{ChatTemplate, TextTokenizer};

fn cached(file: &str) -> Option<PathBuf> {
    let cache = std::env::var_os("RECAP_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models"));
    let path = cache.join(file);
    if path.is_file() {
        Some(path)
    } else {
        println!(
            "SKIPPED: {} is not in the cache; run scripts/fetch-models.sh{} to fetch it",
            path.display(),
            if file.starts_with("qwen") {
                " --qwen"
            } else {
                ""
            }
        );
        None
    }
}

/// Imports `file`, loads the HF directory and greedily answers `question` with the chat
/// template the imported tokenizer_config.json describes; gives the answer text.
fn answer(file: &std::path::Path, question: &str, expected_template: ChatTemplate) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    let summary = gguf::import(file, &out).unwrap();
    println!("imported {summary:?}");
    let tok = TextTokenizer::from_dir(&out).unwrap();
    assert_eq!(tok.template, expected_template);
    let model = load_hf_dir(&out, &Device::Cpu).unwrap();
    let prompt = tok.encode_prompt(question).unwrap();
    let cfg = SamplingConfig {
        max_new_tokens: 24,
        greedy: true,
        temperature: 0.0,
        ..SamplingConfig::default()
    };
    let rollout = generate(&model, Some(&tok), &[prompt], 1, &cfg).unwrap();
    let text = rollout.texts[0].clone();
    println!("{question} -> {text:?}");
    text
}

#[test]
fn gguf_smollm2_answers_paris() {
    let Some(file) = cached("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let text = answer(
        &file,
        "What is the capital of France?",
        ChatTemplate::smollm2(),
    );
    assert!(text.contains("Paris"), "answer: {text:?}");
}

#[test]
fn gguf_qwen25_coder_adds_numbers() {
    let Some(file) = cached("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else {
        return;
    };
    let text = answer(
        &file,
        "What is 12 + 30? Answer with just the number.",
        ChatTemplate::qwen(),
    );
    assert_eq!(text.trim(), "42", "answer: {text:?}");
}
