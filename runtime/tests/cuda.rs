//! CUDA checks, built only with `--features cuda` and run on a machine with a GPU: the model on
//! CUDA gives the CPU's logits, every trainable tensor gets a gradient on the GPU (the fused CPU
//! kernels fall back to the differentiable reference ops there), bf16 compute stays close to
//! f32, and greedy batched generation picks the same tokens as on the CPU.
//!
//! Run: `cargo test -p recap-runtime --features cuda --test cuda` (needs a CUDA device 0).
#![cfg(feature = "cuda")]

mod common;
use common::{fixture, max_abs_diff};

use candle_core::{DType, Device, Tensor};
use recap_runtime::generate::{generate, SamplingConfig};
use recap_runtime::model::load_hf_dir;
use recap_runtime::model::logprob::{token_logprobs, SequenceBatch};
use recap_runtime::tokenizer::TextTokenizer;

fn gpu() -> Device {
    Device::new_cuda(0).expect("a CUDA device 0")
}

#[test]
fn cuda_logits_match_cpu() {
    let dir = fixture();
    let cpu = load_hf_dir(&dir, &Device::Cpu).unwrap();
    let cuda = load_hf_dir(&dir, &gpu()).unwrap();
    let ids = [1u32, 9, 13, 14, 10, 7, 17, 22, 5];
    let on = |d: &Device| Tensor::from_vec(ids.to_vec(), (1, ids.len()), d).unwrap();
    let a = cpu.forward(&on(&Device::Cpu), None).unwrap();
    let b = cuda.forward(&on(&gpu()), None).unwrap();
    let diff = max_abs_diff(&a, &b);
    println!("max |logit cpu - cuda| = {diff:e}");
    assert!(diff < 1e-3, "CUDA logits differ from CPU by {diff}");
}

#[test]
fn every_trainable_tensor_gets_a_gradient_on_cuda() {
    let dir = fixture();
    let dev = gpu();
    let model = load_hf_dir(&dir, &dev).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let p: Vec<Vec<u32>> = ["12+5=", "7+80="]
        .iter()
        .map(|t| tok.encode_prompt(t).unwrap())
        .collect();
    let c: Vec<Vec<u32>> = ["17", "87"]
        .iter()
        .map(|t| tok.encode_prompt(t).unwrap())
        .collect();
    let pr: Vec<&[u32]> = p.iter().map(Vec::as_slice).collect();
    let cr: Vec<&[u32]> = c.iter().map(Vec::as_slice).collect();
    let batch = SequenceBatch::new(&pr, &cr, 0, &dev).unwrap();
    let lp = token_logprobs(&model, &batch).unwrap();
    let loss = (lp * &batch.completion_mask)
        .unwrap()
        .sum_all()
        .unwrap()
        .neg()
        .unwrap();
    let grads = loss.backward().unwrap();
    let vars = model.trainable_vars();
    assert!(!vars.is_empty());
    for var in vars {
        let g = grads
            .get(var.as_tensor())
            .expect("every trainable tensor gets a gradient on CUDA");
        let norm: f32 = g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "bad gradient norm {norm}");
    }
}

#[test]
fn bf16_compute_on_cuda_stays_close_to_f32() {
    let dir = fixture();
    let dev = gpu();
    let full = load_hf_dir(&dir, &dev).unwrap();
    let mut half = load_hf_dir(&dir, &dev).unwrap();
    half.set_compute_dtype(DType::BF16).unwrap();
    let ids = [1u32, 9, 13, 14, 10, 7, 17];
    let t = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &dev).unwrap();
    let a = full.forward(&t, None).unwrap();
    let b = half
        .forward(&t, None)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let diff = max_abs_diff(&a, &b);
    println!("max |logit f32 - bf16| on CUDA = {diff:e}");
    assert!(diff < 0.1, "bf16 logits drift by {diff}");
}

#[test]
fn greedy_generation_on_cuda_matches_cpu() {
    let dir = fixture();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let prompts: Vec<Vec<u32>> = ["59+63=", "1+2=", "75+72="]
        .iter()
        .map(|t| tok.encode_prompt(t).unwrap())
        .collect();
    let cfg = SamplingConfig {
        max_new_tokens: 8,
        greedy: true,
        ..SamplingConfig::default()
    };
    let cpu = load_hf_dir(&dir, &Device::Cpu).unwrap();
    let cuda = load_hf_dir(&dir, &gpu()).unwrap();
    let a = generate(&cpu, Some(&tok), &prompts, 2, &cfg).unwrap();
    let b = generate(&cuda, Some(&tok), &prompts, 2, &cfg).unwrap();
    assert_eq!(a.completion_ids, b.completion_ids);
}
