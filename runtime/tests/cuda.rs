//! CUDA checks, built only with `--features cuda` and run on a machine with a GPU: the model on
//! CUDA gives the CPU's logits, every trainable tensor gets a gradient on the GPU (through the
//! `cuda_fwd` of the same fused ops the CPU runs), bf16 compute stays close to f32, greedy
//! batched generation (sampling on the device) picks the same tokens as on the CPU, and every
//! kernel matches its reference composition, values and gradients.
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

// ---------------------------------------------------------------------------------------------
// The CUDA kernels of `ops` against the reference compositions, values and gradients. The
// reference runs on the CPU in f32 on the same inputs (rounded to the kernel's dtype first, so
// only the arithmetic differs); the kernels run on the GPU in f32 and in bf16.

mod kernels {
    use super::gpu;
    use candle_core::{DType, Device, Result, Tensor, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use recap_runtime::model::padded_causal_mask;
    use recap_runtime::ops;

    /// An input of an op: its value (CPU, f32 or u32) and whether it gets a gradient. Float
    /// inputs are converted to the dtype under test; integer ones only move to the device.
    struct Input {
        value: Tensor,
        grad: bool,
    }

    fn input(value: Tensor) -> Input {
        Input { value, grad: true }
    }

    fn fixed(value: Tensor) -> Input {
        Input { value, grad: false }
    }

    fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Largest |a - b| over the tensor, relative to 1 + the largest |b|.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let a = a
            .to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let b = b
            .to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let max = |t: Tensor| -> f32 {
            t.abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        max((&a - &b).unwrap()) / (1.0 + max(b))
    }

    /// Runs `op` on the CPU reference and on the GPU in `dtype`, and checks that the output has
    /// dtype `out` and that it and the gradients of `sum(out * r)` (r a fixed random tensor)
    /// with respect to every input that takes one agree within `tol`.
    // The test harness takes the case whole; a struct would only rename the arguments.
    #[allow(clippy::too_many_arguments)]
    fn check(
        name: &str,
        dtype: DType,
        out: DType,
        tol: f32,
        inputs: &[Input],
        reference: impl Fn(&[Tensor]) -> Result<Tensor>,
        op: impl Fn(&[Tensor]) -> Result<Tensor>,
    ) {
        let dev = gpu();
        // The inputs as the kernel sees them, rounded to `dtype`, and their f32 CPU twins.
        let mut on_gpu = Vec::new();
        let mut on_cpu = Vec::new();
        for i in inputs {
            let v = &i.value;
            let (g, c) = if v.dtype() == DType::F32 {
                let g = v.to_dtype(dtype).unwrap().to_device(&dev).unwrap();
                let c = g
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_device(&Device::Cpu)
                    .unwrap();
                (g, c)
            } else {
                (v.to_device(&dev).unwrap(), v.clone())
            };
            if i.grad {
                on_gpu.push(Var::from_tensor(&g).unwrap().as_tensor().clone());
                on_cpu.push(Var::from_tensor(&c).unwrap().as_tensor().clone());
            } else {
                on_gpu.push(g);
                on_cpu.push(c);
            }
        }
        let want = reference(&on_cpu).unwrap();
        let got = op(&on_gpu).unwrap();
        assert_eq!(got.dims(), want.dims(), "{name}: shapes differ");
        assert_eq!(got.dtype(), out, "{name}: output dtype");
        let diff = rel_diff(&got, &want);
        println!("{name} {dtype:?}: value rel diff {diff:e}");
        assert!(
            diff <= tol,
            "{name} {dtype:?}: values differ by {diff} (tol {tol})"
        );

        let r = uniform(want.dims(), -1.0, 1.0, 99);
        let loss_cpu = (&want * &r).unwrap().sum_all().unwrap();
        let r = r.to_dtype(out).unwrap().to_device(&dev).unwrap();
        let loss_gpu = (&got * &r).unwrap().sum_all().unwrap();
        let (gc, gg) = (loss_cpu.backward().unwrap(), loss_gpu.backward().unwrap());
        for (k, i) in inputs.iter().enumerate() {
            if !i.grad {
                continue;
            }
            let a = gg.get(&on_gpu[k]).expect("the kernel gives a gradient");
            let b = gc.get(&on_cpu[k]).expect("the reference gives a gradient");
            assert_eq!(a.dtype(), dtype, "{name}: gradient dtype");
            let diff = rel_diff(a, b);
            println!("{name} {dtype:?}: gradient {k} rel diff {diff:e}");
            assert!(
                diff <= 2.0 * tol,
                "{name} {dtype:?}: gradients of input {k} differ by {diff} (tol {})",
                2.0 * tol
            );
        }
    }

    /// Tolerances: f32 kernels differ from the reference only in the order of additions; bf16
    /// stores every value with 8 bits of mantissa.
    const DTYPES: [(DType, f32); 2] = [(DType::F32, 1e-4), (DType::BF16, 2e-2)];

    #[test]
    fn rms_norm_matches_reference() {
        // Odd widths, a row wider than one block, and enough rows to need several chunks of
        // the weight-gradient kernel.
        for (k, shape) in [vec![3, 5, 67], vec![2, 1000], vec![130, 64], vec![1, 1]]
            .into_iter()
            .enumerate()
        {
            let h = *shape.last().unwrap();
            for (dtype, tol) in DTYPES {
                check(
                    &format!("rms_norm {shape:?}"),
                    dtype,
                    dtype,
                    tol,
                    &[
                        input(uniform(&shape, -2.0, 2.0, k as u64)),
                        input(uniform(&[h], 0.5, 1.5, 10 + k as u64)),
                    ],
                    |t| ops::reference::rms_norm(&t[0], &t[1], 1e-6),
                    |t| ops::rms_norm(&t[0], &t[1], 1e-6),
                );
            }
        }
    }

    #[test]
    fn rope_matches_reference() {
        for (k, (b, h, seq, d, positions)) in [(2, 3, 7, 10, 9), (1, 2, 5, 64, 5), (3, 1, 1, 2, 4)]
            .into_iter()
            .enumerate()
        {
            let k = k as u64;
            for (dtype, tol) in DTYPES {
                let angles = uniform(&[positions, d / 2], -3.0, 3.0, 20 + k);
                check(
                    &format!("rope ({b}, {h}, {seq}, {d})"),
                    dtype,
                    dtype,
                    tol,
                    &[
                        input(uniform(&[b, h, seq, d], -2.0, 2.0, k)),
                        fixed(angles.cos().unwrap()),
                        fixed(angles.sin().unwrap()),
                    ],
                    |t| ops::reference::rope(&t[0], &t[1], &t[2]),
                    |t| ops::rope(&t[0], &t[1], &t[2]),
                );
            }
        }
        // A transposed view (batch, seq, heads, d) -> (batch, heads, seq, d), as the model
        // passes it.
        let angles = uniform(&[6, 4], -3.0, 3.0, 5);
        for (dtype, tol) in DTYPES {
            check(
                "rope of a transposed view",
                dtype,
                dtype,
                tol,
                &[
                    input(uniform(&[2, 6, 3, 8], -2.0, 2.0, 6)),
                    fixed(angles.cos().unwrap()),
                    fixed(angles.sin().unwrap()),
                ],
                |t| ops::reference::rope(&t[0].transpose(1, 2)?, &t[1], &t[2]),
                |t| ops::rope(&t[0].transpose(1, 2)?, &t[1], &t[2]),
            );
        }
    }

    #[test]
    fn swiglu_matches_reference() {
        for (k, shape) in [vec![3, 7, 33], vec![4099], vec![1]]
            .into_iter()
            .enumerate()
        {
            for (dtype, tol) in DTYPES {
                check(
                    &format!("swiglu {shape:?}"),
                    dtype,
                    dtype,
                    tol,
                    &[
                        input(uniform(&shape, -6.0, 6.0, k as u64)),
                        input(uniform(&shape, -2.0, 2.0, 30 + k as u64)),
                    ],
                    |t| ops::reference::swiglu(&t[0], &t[1]),
                    |t| ops::swiglu(&t[0], &t[1]),
                );
            }
        }
    }

    #[test]
    fn softmax_matches_reference() {
        for (k, shape) in [vec![5, 300], vec![2, 3, 7], vec![4, 1]]
            .into_iter()
            .enumerate()
        {
            for (dtype, tol) in DTYPES {
                check(
                    &format!("softmax {shape:?}"),
                    dtype,
                    dtype,
                    tol,
                    &[input(uniform(&shape, -8.0, 8.0, k as u64))],
                    |t| ops::reference::softmax_last_dim(&t[0]),
                    |t| ops::softmax_last_dim(&t[0]),
                );
            }
        }
    }

    #[test]
    fn softmax_of_a_fully_masked_row_is_zero() {
        // The reference gives NaN here; zeros show that the kernel, not the fallback, ran.
        let row = [f32::NEG_INFINITY; 4];
        let x = Tensor::from_vec([row, [0.0, 1.0, 2.0, 3.0]].concat(), (2, 4), &gpu()).unwrap();
        let y = ops::softmax_last_dim(&x).unwrap();
        let y: Vec<Vec<f32>> = y.to_vec2().unwrap();
        assert_eq!(y[0], vec![0.0; 4]);
        assert!((y[1].iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn log_softmax_gather_matches_reference() {
        // A 151936-token vocabulary (Qwen2.5's) and odd small ones.
        for (k, (lead, vocab)) in [(vec![2, 3], 1001), (vec![2], 151_936), (vec![1, 1], 7)]
            .into_iter()
            .enumerate()
        {
            let rows: usize = lead.iter().product();
            let mut rng = ChaCha8Rng::seed_from_u64(40 + k as u64);
            let t: Vec<u32> = (0..rows)
                .map(|_| rng.random_range(0..vocab as u32))
                .collect();
            let targets = Tensor::from_vec(t, lead.as_slice(), &Device::Cpu).unwrap();
            let mut shape = lead.clone();
            shape.push(vocab);
            for (dtype, tol) in DTYPES {
                check(
                    &format!("log_softmax_gather {shape:?}"),
                    dtype,
                    DType::F32,
                    tol,
                    &[
                        input(uniform(&shape, -10.0, 10.0, k as u64)),
                        fixed(targets.clone()),
                    ],
                    |t| ops::reference::log_softmax_gather(&t[0], &t[1]),
                    |t| ops::log_softmax_gather(&t[0], &t[1]),
                );
            }
        }
    }

    /// Left padding of `pads[r]` positions in row r of a batch of width t.
    fn padding(pads: &[usize], t: usize) -> Vec<Vec<bool>> {
        pads.iter()
            .map(|&p| (0..t).map(|j| j < p).collect())
            .collect()
    }

    #[test]
    fn attention_matches_reference() {
        // (batch, heads, kv heads, tq, tk, head_dim, left padding per row): GQA ratios 1, 2, 4
        // and 7, padded rows, odd sizes, and a decode step (one query over a cache).
        let cases = [
            (2, 4, 4, 7, 7, 16, vec![0, 3]),
            (2, 6, 3, 13, 13, 10, vec![5, 0]),
            (1, 8, 2, 5, 5, 64, vec![2]),
            (3, 7, 1, 9, 9, 8, vec![0, 1, 8]),
            (2, 4, 2, 1, 11, 16, vec![0, 4]),
        ];
        for (k, (b, h, kvh, tq, tk, d, pads)) in cases.into_iter().enumerate() {
            let k = k as u64;
            let mask = if tq == tk {
                padded_causal_mask(&padding(&pads, tk), DType::F32, &Device::Cpu).unwrap()
            } else {
                // A decode step: the one query sees every non-padding key of its row.
                let m: Vec<f32> = padding(&pads, tk)
                    .concat()
                    .into_iter()
                    .map(|p| if p { f32::NEG_INFINITY } else { 0.0 })
                    .collect();
                Tensor::from_vec(m, (b, 1, 1, tk), &Device::Cpu).unwrap()
            };
            let scale = 1.0 / (d as f64).sqrt();
            for (dtype, tol) in DTYPES {
                check(
                    &format!("attention b{b} h{h} kv{kvh} tq{tq} tk{tk} d{d}"),
                    dtype,
                    dtype,
                    tol,
                    &[
                        input(uniform(&[b, h, tq, d], -2.0, 2.0, k)),
                        input(uniform(&[b, kvh, tk, d], -2.0, 2.0, 50 + k)),
                        input(uniform(&[b, kvh, tk, d], -2.0, 2.0, 60 + k)),
                        fixed(mask.clone()),
                    ],
                    |t| ops::reference::attention(&t[0], &t[1], &t[2], Some(&t[3]), scale),
                    |t| ops::attention(&t[0], &t[1], &t[2], Some(&t[3]), scale),
                );
            }
        }
    }
}
