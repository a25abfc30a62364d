//! Greedy decode speed of a model on the CPU: `decode_bench MODEL [NEW_TOKENS] [PROMPT]`, where
//! MODEL is an HF directory or a GGUF file (imported into a temporary directory first). Generates
//! one completion of exactly NEW_TOKENS tokens (default 128; end-of-sequence tokens do not stop
//! it, so every run decodes the same number of steps) with the model's chat template, and prints
//! prefill time and decode tokens per second (median of 3 runs after a warm-up). Build with
//! `--release` for meaningful figures. The allocator is tuned as the runtime tunes it
//! (`RECAP_NO_ALLOC_TUNING=1` measures with glibc's defaults).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::Device;
use recap_runtime::generate::{generate, SamplingConfig};
use recap_runtime::model::load_hf_dir;
use recap_runtime::tokenizer::TextTokenizer;

fn run() -> Result<(), String> {
    let tuned = std::env::var_os("RECAP_NO_ALLOC_TUNING").is_none()
        && recap_runtime::alloc::tune_allocator();
    // CANDLE_NUM_THREADS=2 measures with a worker in candle's element-wise pool.
    recap_runtime::alloc::tune_threads();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(model_arg) = args.first() else {
        return Err("usage: decode_bench MODEL_DIR_OR_GGUF [NEW_TOKENS] [PROMPT]".into());
    };
    let new_tokens: usize = match args.get(1) {
        Some(n) => n.parse().map_err(|e| format!("NEW_TOKENS '{n}': {e}"))?,
        None => 128,
    };
    let prompt = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "Write a short story about a lighthouse keeper.".to_string());

    let _tmp;
    let dir: PathBuf = if Path::new(model_arg).is_file() {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = tmp.path().join("hf");
        let start = Instant::now();
        recap_runtime::gguf::import(model_arg, &out).map_err(|e| e.to_string())?;
        println!(
            "imported {model_arg} in {:.2} s",
            start.elapsed().as_secs_f64()
        );
        _tmp = tmp;
        out
    } else {
        PathBuf::from(model_arg)
    };
    let tok = TextTokenizer::from_dir(&dir).map_err(|e| e.to_string())?;
    let model = load_hf_dir(&dir, &Device::Cpu).map_err(|e| e.to_string())?;
    let ids = tok.encode_prompt(&prompt).map_err(|e| e.to_string())?;
    // An id outside the vocabulary never comes out of the model, so no row stops early.
    let cfg = |n: usize| SamplingConfig {
        max_new_tokens: n,
        greedy: true,
        temperature: 0.0,
        eos_token_ids: vec![u32::MAX],
        ..SamplingConfig::default()
    };
    let time = |n: usize| -> Result<(f64, String), String> {
        let start = Instant::now();
        let r = generate(&model, Some(&tok), std::slice::from_ref(&ids), 1, &cfg(n))
            .map_err(|e| e.to_string())?;
        if r.completion_ids[0].len() != n {
            return Err(format!(
                "generated {} tokens, not {n}",
                r.completion_ids[0].len()
            ));
        }
        Ok((start.elapsed().as_secs_f64(), r.texts[0].clone()))
    };
    time(new_tokens)?;
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut prefill = Vec::new();
    let mut full = Vec::new();
    let mut text = String::new();
    for _ in 0..3 {
        prefill.push(time(1)?.0);
        let (t, s) = time(new_tokens)?;
        full.push(t);
        text = s;
    }
    let (prefill, full) = (median(prefill), median(full));
    let decode_tokens = new_tokens.saturating_sub(1).max(1);
    println!(
        "prompt {} tokens, prefill (+1 token) {:.1} ms; {new_tokens} new tokens in {:.3} s: \
         decode {:.1} tokens/s ({:.2} ms/token), end to end {:.1} tokens/s; threads {}; \
         allocator tuned: {tuned}",
        ids.len(),
        prefill * 1e3,
        full,
        decode_tokens as f64 / (full - prefill),
        (full - prefill) / decode_tokens as f64 * 1e3,
        new_tokens as f64 / full,
        candle_core::utils::get_num_threads(),
    );
    println!("completion: {text:?}");
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
