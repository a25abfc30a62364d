//! End-to-end GGUF tests on the real models that `scripts/fetch-models.sh` puts in the cache
//! (`$RECAP_CACHE`, else `.cache/models/` in the repository root): import the GGUF file into an
//! HF directory, load it with recap's loader and answer a question by greedy ChatML generation.
//! For SmolLM2 (the Llama family), also compare recap's logits with Hugging Face transformers'
//! on the same imported directory (`tests/data/smollm2_reference.json`, made by
//! `scripts/make-reference-logits.py --smollm2`). Each test prints a notice and passes when its
//! file is not in the cache, so a machine without the downloads still runs the rest of the
//! suite; CI fetches SmolLM2 first.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use recap_runtime::generate::{generate, SamplingConfig};
use recap_runtime::gguf;
use recap_runtime::model::load_hf_dir;
use recap_runtime::tokenizer::TextTokenizer;
use serde::Deserialize;

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
/// template the imported tokenizer_config.json describes, whose rendering of the question must
/// start with the model's default system turn `system`; gives the answer text.
fn answer(file: &std::path::Path, question: &str, system: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    let summary = gguf::import(file, &out).unwrap();
    println!("imported {summary:?}");
    let tok = TextTokenizer::from_dir(&out).unwrap();
    let rendered = tok.template.apply(question).unwrap();
    assert!(
        rendered.starts_with(&format!("<|im_start|>system\n{system}<|im_end|>\n")),
        "{rendered:?}"
    );
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
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
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
        "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    );
    assert_eq!(text.trim(), "42", "answer: {text:?}");
}

#[derive(Deserialize)]
struct Smollm2Vector {
    vocab_size: usize,
    id_step: usize,
    cases: Vec<Smollm2Case>,
}

#[derive(Deserialize)]
struct Smollm2Case {
    text: String,
    input_ids: Vec<u32>,
    spread_logits: Vec<Vec<f32>>,
    top_ids: Vec<Vec<u32>>,
    top_logits: Vec<Vec<f32>>,
}

/// Logits of SmolLM2 reach about 30 and pass through 30 layers in f32, computed in a different
/// order by torch and candle (measured: 1.1e-4 apart at most); 1e-3 absolute is about 3e-5 of
/// their scale, far below the gaps between the top tokens that decide what the model says.
const SMOLLM2_TOLERANCE: f32 = 1e-3;

#[test]
fn gguf_smollm2_logits_match_transformers() {
    let Some(file) = cached("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/smollm2_reference.json");
    let v: Smollm2Vector = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    gguf::import(&file, &out).unwrap();
    let tok = TextTokenizer::from_dir(&out).unwrap();
    let model = load_hf_dir(&out, &Device::Cpu).unwrap();
    assert_eq!(model.config().vocab_size, v.vocab_size);

    let mut worst = 0f32;
    for case in &v.cases {
        // The rebuilt tokenizer gives the ids transformers was fed.
        assert_eq!(tok.encode(&case.text, false).unwrap(), case.input_ids);
        let ids = Tensor::new(case.input_ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits: Vec<Vec<f32>> = model
            .forward(&ids, None)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(logits.len(), case.input_ids.len());
        for (pos, row) in logits.iter().enumerate() {
            let spread = row.iter().step_by(v.id_step);
            for (got, want) in spread.zip(&case.spread_logits[pos]) {
                worst = worst.max((got - want).abs());
            }
            for (id, want) in case.top_ids[pos].iter().zip(&case.top_logits[pos]) {
                worst = worst.max((row[*id as usize] - want).abs());
            }
            // The most likely token is transformers' top token.
            let argmax = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                    if x > best.1 {
                        (i, x)
                    } else {
                        best
                    }
                })
                .0;
            let (top, second) = (case.top_logits[pos][0], case.top_logits[pos][1]);
            if top - second > 2.0 * SMOLLM2_TOLERANCE {
                assert_eq!(argmax as u32, case.top_ids[pos][0], "position {pos}");
            }
        }
    }
    println!("largest |recap - transformers| over the kept SmolLM2 logits: {worst}");
    assert!(
        worst <= SMOLLM2_TOLERANCE,
        "SmolLM2 logits differ from transformers by up to {worst} (if the import changed on \
         purpose, regenerate the vector with scripts/make-reference-logits.py --smollm2)"
    );
}
