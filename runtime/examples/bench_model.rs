//! Benchmark of the model layer on an HF directory (the fixture-tiny workload of DESIGN.md §8):
//! takes the directory (with `train.jsonl`), gives the median seconds of a rollout of 8 prompts
//! x 8 completions x 16 new tokens at temperature 1, of one policy forward+backward of those 64
//! sequences plus the reference forward, generated tokens per second and peak RSS. The training
//! pass runs as the engine runs it: chunks of rows side by side (`train::parallel`), on the
//! hand-written CPU pass (`model::fast`), or on candle's autograd with `RECAP_AUTOGRAD=1`. On
//! the hand-written pass it also prints the seconds of its parts (policy forward, backward,
//! reference forward), summed over the chunks, and their rate in GFLOP/s.
//!
//! `cargo run --release -p recap-runtime --example bench_model -- /work/shared/bench/fixture-tiny [reps]`
//!
//! `BENCH_SHAPE=P,G,T` changes the workload to P prompts (the first rows of `train.jsonl`) x G
//! completions x T new tokens, e.g. `BENCH_SHAPE=2,4,32` for the CPU SmolLM2-135M benchmark of
//! `pipelines/bench/cpu-smollm2.recap`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use candle_core::{Device, Var};
use recap_runtime::generate::{generate, SamplingConfig};
use recap_runtime::model::logprob::{
    reference_logprobs, token_logprobs, PassOptions, SequenceBatch,
};
use recap_runtime::model::{fast, load_hf_dir};
use recap_runtime::tokenizer::TextTokenizer;
use recap_runtime::train::parallel::{fold_chunks, parts, row_chunks};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds used by all threads of this process so far (from /proc, nanosecond resolution):
/// on a shared machine it moves far less than wall time.
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
    ns as f64 * 1e-9
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: bench_model <hf-dir with train.jsonl> [reps]")?;
    let reps: usize = args.next().map_or(Ok(10), |s| s.parse())?;
    let dir = std::path::PathBuf::from(dir);
    // RECAP_NO_ALLOC_TUNING=1 measures with glibc's default allocator settings.
    let tuned = std::env::var_os("RECAP_NO_ALLOC_TUNING").is_none()
        && recap_runtime::alloc::tune_allocator()
        && recap_runtime::alloc::keep_freed();
    // CANDLE_NUM_THREADS=2 measures with a worker in candle's element-wise pool.
    recap_runtime::alloc::tune_threads();
    let device = Device::Cpu;
    let policy = load_hf_dir(&dir, &device)?;
    let reference = policy.frozen_copy()?;
    let tok = TextTokenizer::from_dir(&dir)?;
    // RECAP_AUTOGRAD=1 measures the training pass on candle's autograd, as the engine then runs it.
    let fast_path = fast::supported(&policy) && !recap_runtime::engine::autograd_from_env();
    println!(
        "training pass: {}",
        if fast_path {
            "hand-written (model::fast)"
        } else {
            "candle autograd"
        }
    );
    println!(
        "allocator tuned: {tuned}; RSS after loading policy + reference: {:.1} MB",
        peak_rss_mb()
    );
    let shape = std::env::var("BENCH_SHAPE").unwrap_or_else(|_| "8,8,16".into());
    let shape: Vec<usize> = shape
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("BENCH_SHAPE `{shape}`: want PROMPTS,GROUP,NEW_TOKENS"))?;
    let &[n_prompts, group, new_tokens] = shape.as_slice() else {
        return Err("BENCH_SHAPE: want three numbers, PROMPTS,GROUP,NEW_TOKENS".into());
    };
    let train = std::fs::read_to_string(dir.join("train.jsonl"))?;
    let prompts: Vec<Vec<u32>> = train
        .lines()
        .take(n_prompts)
        .map(|l| -> Result<Vec<u32>, Box<dyn std::error::Error>> {
            let v: serde_json::Value = serde_json::from_str(l)?;
            let p = v["prompt"]
                .as_str()
                .ok_or("train.jsonl row without prompt")?;
            Ok(tok.encode_prompt(p)?)
        })
        .collect::<Result<_, _>>()?;

    let mut rollout_s = Vec::new();
    let mut step_s = Vec::new();
    let mut cpu = [Vec::new(), Vec::new()];
    let mut tokens = 0;
    let mut part_s = [Vec::new(), Vec::new(), Vec::new()];
    let mut work = (0, 0);
    // Two warm-up repetitions, as the peer figures skip two warm-up steps.
    for rep in 0..reps + 2 {
        let cfg = SamplingConfig {
            max_new_tokens: new_tokens,
            temperature: 1.0,
            seed: rep as u64,
            ..SamplingConfig::default()
        };
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        let rollout = generate(&policy, Some(&tok), &prompts, group, &cfg)?;
        let t1 = Instant::now();
        let c1 = cpu_seconds();
        // The engine's training pass: chunks of rows side by side (train::parallel), each
        // chunk's policy forward+backward and reference forward, gradients summed in order.
        let n = rollout.completion_ids.len();
        let total = rollout.num_tokens().max(1) as f64;
        let c = policy.config();
        let params: usize = policy.trainable_vars().iter().map(|v| v.elem_count()).sum();
        let seq_tokens: usize = (0..n)
            .map(|r| rollout.prompt_of(r).len() + rollout.completion_ids[r].len())
            .sum();
        let parts = parts(
            &device,
            seq_tokens,
            c.hidden_size,
            c.num_hidden_layers,
            params,
        );
        let chunks = row_chunks(n, None, parts);
        // As the engine does, the fast path reads each model's weights in place for all chunks.
        let hosts = if fast_path {
            Some((
                fast::HostWeights::new(&policy)?,
                fast::HostWeights::new(&reference)?,
            ))
        } else {
            None
        };
        let mut outs = Vec::new();
        let parts_ns = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
        let each = |range: std::ops::Range<usize>| -> candle_core::Result<_> {
            let p: Vec<&[u32]> = range.clone().map(|r| rollout.prompt_of(r)).collect();
            let c: Vec<&[u32]> = range
                .map(|r| rollout.completion_ids[r].as_slice())
                .collect();
            let batch = SequenceBatch::new(&p, &c, tok.pad_id, &device)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            if let Some((policy_w, reference_w)) = &hosts {
                // The engine's default on the CPU in f32: the hand-written pass (model::fast),
                // the loss built by candle on its log-probs held in a Var.
                let t = Instant::now();
                let ff = fast::forward_with(&policy, policy_w, &batch, PassOptions::of(&policy))?;
                let lp = Var::from_tensor(&ff.logp_tensor()?)?;
                let loss =
                    ((lp.as_tensor() * &batch.completion_mask)?.sum_all()? / total)?.neg()?;
                let t_fwd = t.elapsed();
                let grads = ff.loss_backward(&loss, lp.as_tensor())?;
                drop(ff);
                let t_bwd = t.elapsed();
                let ref_lp = fast::logprobs_tensor_with(&reference, reference_w, &batch)?;
                let times = [t_fwd, t_bwd - t_fwd, t.elapsed() - t_bwd];
                for (sum, d) in parts_ns.iter().zip(times) {
                    sum.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
                }
                Ok((grads, ref_lp))
            } else {
                let lp = token_logprobs(&policy, &batch)?;
                let loss = ((lp * &batch.completion_mask)?.sum_all()? / total)?.neg()?;
                let grads = loss.backward()?;
                let ref_lp = reference_logprobs(&reference, &batch)?;
                Ok((grads, ref_lp))
            }
        };
        fold_chunks(&chunks, parts, each, |o| {
            outs.push(o);
            Ok(())
        })?;
        let mut grads = Vec::new();
        for var in policy.trainable_vars() {
            let mut sum: Option<candle_core::Tensor> = None;
            for (g, _) in &outs {
                if let Some(g) = g.get(var.as_tensor()) {
                    sum = Some(match sum {
                        Some(s) => (s + g)?,
                        None => g.clone(),
                    });
                }
            }
            grads.push(sum);
        }
        let t2 = Instant::now();
        let c2 = cpu_seconds();
        drop((grads, outs));
        if rep >= 2 {
            for (v, x) in cpu.iter_mut().zip([c1 - c0, c2 - c1]) {
                v.push(x);
            }
            rollout_s.push((t1 - t0).as_secs_f64());
            step_s.push((t2 - t1).as_secs_f64());
            tokens = rollout.num_tokens();
            for (v, ns) in part_s.iter_mut().zip(&parts_ns) {
                v.push(ns.load(Ordering::Relaxed) as f64 * 1e-9);
            }
            // Sequence tokens (prompt and completion, no padding) and the positions the head
            // projects, for the rate of each part.
            work = (seq_tokens, rollout.num_tokens());
        }
    }
    let r = median(rollout_s);
    let s = median(step_s);
    let rows = prompts.len() * group;
    println!("rollout {}x{group}x{new_tokens} (temperature 1.0): {r:.4} s median of {reps}, {:.0} tokens/s ({tokens} tokens)", prompts.len(), tokens as f64 / r);
    println!(
        "policy forward+backward + reference forward ({rows} seqs): {s:.4} s median of {reps}"
    );
    if fast_path {
        // Nominal work of each part: 2 FLOP per weight of the blocks per token and per weight
        // of the head per projected position for a forward; the backward makes the head's
        // logits again and takes two products per weight (4 + 2 for the head).
        let c = policy.config();
        let head = c.vocab_size * c.hidden_size;
        let params: usize = policy.trainable_vars().iter().map(|v| v.elem_count()).sum();
        let blocks = params - head * if c.tie_word_embeddings { 1 } else { 2 };
        let (toks, pos) = (work.0 as f64, work.1 as f64);
        let fwd = 2.0 * (blocks as f64 * toks + head as f64 * pos) * 1e-9;
        let bwd = (4.0 * blocks as f64 * toks + 6.0 * head as f64 * pos) * 1e-9;
        for (name, v, gflop) in [
            ("policy forward", &part_s[0], fwd),
            ("policy backward", &part_s[1], bwd),
            ("reference forward", &part_s[2], fwd),
        ] {
            let t = median(v.clone());
            println!("  {name}: {t:.4} s summed over chunks, {gflop:.1} GFLOP, {:.1} GFLOP/s per chunk-second", gflop / t);
        }
    }
    let [cr, ct] = cpu.map(median);
    println!(
        "cpu seconds (all threads, median): rollout {cr:.4}, policy forward+backward + reference forward {ct:.4}"
    );
    println!("peak RSS (VmHWM): {:.1} MB", peak_rss_mb());
    Ok(())
}
