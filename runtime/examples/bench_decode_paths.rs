//! Rollout times of the decode on the CPU: `bench_decode_paths [REPS] [TOKENIZER_DIR]`.
//!
//! Finished rows: a seeded random Qwen2 model (4.2M parameters, vocabulary 4096) generates 4
//! prompts x 8 completions of up to 64 tokens at temperature 1 on the tensor decode path (what
//! CUDA runs, with host or device sampling), with the first 128 token ids as end-of-sequence
//! tokens, so that rows finish along the way as a trained model's do. Prints, per path, the
//! median seconds of a rollout, generated tokens and the row-forwards the decode ran.
//!
//! Stop strings, with TOKENIZER_DIR (an HF directory's `tokenizer.json`, e.g. SmolLM2's): a
//! small seeded random model over the first 2048 ids of that vocabulary generates 4 prompts x 8
//! completions of 256 tokens on the default path, without and with a stop string that does not
//! occur, so every row is checked at every step. Prints the median seconds of each.
//!
//! Medians are over REPS runs (default 5) after a warm-up. Build with `--release` (or the dev
//! profile, which optimises the runtime) for meaningful figures.

use std::time::Instant;

use candle_core::{DType, Device};
use recap_runtime::generate::{generate, generate_on, DecodePath, SamplingConfig};
use recap_runtime::model::{Family, Model, ModelConfig};
use recap_runtime::tokenizer::TextTokenizer;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reps: usize = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    let tokenizer_dir = std::env::args().nth(2);
    recap_runtime::alloc::tune_allocator();
    recap_runtime::alloc::tune_threads();
    let mut config = ModelConfig::new(Family::Qwen2, 4096, 256, 768, 4, 4, 2, true);
    config.max_position_embeddings = 128;
    let model = Model::tiny(&config, 1, DType::F32, &Device::Cpu)?;
    let prompts: Vec<Vec<u32>> = (0..4u32)
        .map(|p| (0..16).map(|i| 128 + (p * 131 + i * 17) % 3900).collect())
        .collect();
    for (name, path) in [
        ("tensor, host sampling", DecodePath::Tensor),
        ("tensor, device sampling", DecodePath::Device),
    ] {
        let mut times = Vec::new();
        let (mut tokens, mut rows) = (0, 0);
        for rep in 0..=reps {
            let cfg = SamplingConfig {
                max_new_tokens: 64,
                temperature: 1.0,
                eos_token_ids: (0..128).collect(),
                seed: rep as u64,
                ..SamplingConfig::default()
            };
            let t0 = Instant::now();
            let r = generate_on(&model, None, &prompts, 8, &cfg, path)?;
            if rep > 0 {
                times.push(t0.elapsed().as_secs_f64());
                tokens += r.num_tokens();
                rows += r.decode_rows;
            }
        }
        println!(
            "{name}: median rollout {:.4} s, {:.0} tokens and {:.0} row-forwards per rollout",
            median(times),
            tokens as f64 / reps as f64,
            rows as f64 / reps as f64
        );
    }
    if let Some(dir) = tokenizer_dir {
        stop_strings(&TextTokenizer::from_dir(dir)?, reps)?;
    }
    Ok(())
}

/// The stop-string part: rollouts without and with a stop string that never occurs.
fn stop_strings(tok: &TextTokenizer, reps: usize) -> Result<(), Box<dyn std::error::Error>> {
    // The model's vocabulary is the tokenizer's first 2048 ids (SmolLM2's bytes and commonest
    // merges), so that the model and the sampler cost little beside the stop-string checks.
    let vocab = tok.inner().get_vocab_size(true).min(2048);
    let mut config = ModelConfig::new(Family::Qwen2, vocab, 64, 128, 2, 2, 1, true);
    config.max_position_embeddings = 512;
    let model = Model::tiny(&config, 2, DType::F32, &Device::Cpu)?;
    let prompts: Vec<Vec<u32>> = (0..4u32)
        .map(|p| (0..16).map(|i| 300 + (p * 131 + i * 17) % 1700).collect())
        .collect();
    for stops in [vec![], vec!["<never a completion>".to_string()]] {
        let mut times = Vec::new();
        for rep in 0..=reps {
            let cfg = SamplingConfig {
                max_new_tokens: 256,
                temperature: 1.0,
                ignore_eos: true,
                stop_strings: stops.clone(),
                seed: rep as u64,
                ..SamplingConfig::default()
            };
            let t0 = Instant::now();
            let r = generate(&model, Some(tok), &prompts, 8, &cfg)?;
            if rep > 0 {
                times.push(t0.elapsed().as_secs_f64());
            }
            assert_eq!(
                r.num_tokens(),
                32 * 256,
                "every row runs to the length limit"
            );
        }
        println!(
            "{} stop strings: median rollout {:.4} s",
            stops.len(),
            median(times)
        );
    }
    Ok(())
}
