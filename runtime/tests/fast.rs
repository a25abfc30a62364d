//! The hand-written CPU f32 training pass (`model::fast`) against candle's autograd path: the
//! log-probabilities must equal `token_logprobs`, and the gradient of a random linear loss of
//! them must equal what `loss.backward()` gives for every trainable variable, on tiny Qwen2
//! (with attention biases) and Llama models and on the fixture, with left-padded batches.

mod common;
use common::fixture;

use candle_core::{DType, Device, Tensor};
use recap_runtime::model::fast;
use recap_runtime::model::logprob::{token_logprobs, SequenceBatch};
use recap_runtime::model::{load_hf_dir, Family, Model, ModelConfig};

fn tiny_config(family: Family, tied: bool) -> ModelConfig {
    let mut c = ModelConfig::new(family, 56, 32, 64, 2, 4, 2, tied);
    c.max_position_embeddings = 64;
    c.pad_token_id = Some(0);
    c
}

/// A small deterministic generator (64-bit LCG) so the tests need no RNG crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Uniform in [-1, 1).
    fn coef(&mut self) -> f32 {
        (self.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0
    }
}

/// Rows of different prompt and completion lengths (one completion empty), so the batch is
/// left-padded in the prompt and right-padded in the completion.
fn batch(rng: &mut Lcg, vocab: usize, rows: usize) -> SequenceBatch {
    let mut prompts = Vec::new();
    let mut comps = Vec::new();
    for r in 0..rows {
        let pl = 1 + rng.below(7);
        let cl = if r == 1 { 0 } else { 1 + rng.below(6) };
        prompts.push(
            (0..pl)
                .map(|_| 1 + rng.below(vocab - 1) as u32)
                .collect::<Vec<_>>(),
        );
        comps.push(
            (0..cl)
                .map(|_| 1 + rng.below(vocab - 1) as u32)
                .collect::<Vec<_>>(),
        );
    }
    pack(&prompts, &comps)
}

fn pack(prompts: &[Vec<u32>], comps: &[Vec<u32>]) -> SequenceBatch {
    let p: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let c: Vec<&[u32]> = comps.iter().map(Vec::as_slice).collect();
    SequenceBatch::new(&p, &c, 0, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Checks (a) the log-probs, (b) every gradient and (c) that every trainable variable gets one,
/// on a random batch.
fn check(model: &Model, seed: u64, rows: usize) {
    let mut rng = Lcg(seed);
    let vocab = model.config().vocab_size;
    let b = batch(&mut rng, vocab, rows);
    check_batch(model, &b, &mut rng);
}

/// The checks of [`check`] on a given batch; prints the largest errors seen.
fn check_batch(model: &Model, b: &SequenceBatch, rng: &mut Lcg) {
    let (n, l) = b.completion_ids.dims2().unwrap();

    // (a) Log-probabilities, all positions (padding ones included).
    let reference = token_logprobs(model, b).unwrap();
    let ff = fast::forward(model, b).unwrap();
    let want = flat(&reference);
    assert_eq!(ff.logp().len(), want.len());
    let mut worst_logp = 0f32;
    for (i, (a, w)) in ff.logp().iter().zip(&want).enumerate() {
        assert!((a - w).abs() <= 1e-5, "logp {i}: fast {a} vs candle {w}");
        worst_logp = worst_logp.max((a - w).abs());
    }
    let no_save = fast::logprobs(model, b).unwrap();
    assert_eq!(
        no_save,
        ff.logp(),
        "the no-save forward must give the same values"
    );

    // (b) Gradients of L = sum(logp * c * mask).
    let coefs: Vec<f32> = (0..n * l).map(|_| rng.coef()).collect();
    let c = Tensor::from_vec(coefs.clone(), (n, l), &Device::Cpu).unwrap();
    let weights = (c * &b.completion_mask).unwrap();
    let loss = (&reference * &weights).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let dlogp = flat(&weights);
    let fast_grads = ff.backward(&dlogp).unwrap();

    // (c) Every trainable variable has exactly one gradient from the fast path.
    let vars = model.trainable_vars();
    assert_eq!(fast_grads.len(), vars.len(), "one gradient per variable");
    let mut worst_grad = 0f32;
    for var in &vars {
        let Some((_, g)) = fast_grads
            .iter()
            .find(|(w, _)| w.id() == var.as_tensor().id())
        else {
            panic!("variable of shape {:?} got no fast gradient", var.shape());
        };
        assert_eq!(g.dims(), var.dims());
        let want = flat(grads.get(var.as_tensor()).expect("candle gradient"));
        let got = flat(g);
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "candle gradient of {:?} is zero", var.shape());
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        worst_grad = worst_grad.max(err / scale);
        assert!(
            err <= 1e-4 * scale,
            "gradient of {:?}: max difference {err} against max magnitude {scale}",
            var.shape()
        );
    }

    eprintln!(
        "{n} rows x {l}: largest logp difference {worst_logp:e}, largest gradient difference \
         {worst_grad:e} of the gradient's largest magnitude"
    );

    // The GradStore route the engine takes gives the same gradients.
    let var = candle_core::Var::from_tensor(&ff.logp_tensor().unwrap()).unwrap();
    let weights =
        (Tensor::from_vec(coefs, (n, l), &Device::Cpu).unwrap() * &b.completion_mask).unwrap();
    let loss2 = (var.as_tensor() * &weights).unwrap().sum_all().unwrap();
    let store = ff.loss_backward(&loss2, var.as_tensor()).unwrap();
    for (w, g) in &fast_grads {
        let s = store.get(w).expect("weight in the store");
        assert_eq!(flat(s), flat(g));
    }
}

#[test]
fn fast_pass_matches_autograd_on_tiny_qwen2_and_llama() {
    for (i, (family, tied)) in [
        (Family::Qwen2, true),
        (Family::Qwen2, false),
        (Family::Llama, true),
        (Family::Llama, false),
    ]
    .into_iter()
    .enumerate()
    {
        let config = tiny_config(family, tied);
        assert_eq!(config.attention_bias, family == Family::Qwen2);
        let model = Model::tiny(&config, 11 + i as u64, DType::F32, &Device::Cpu).unwrap();
        check(&model, 100 + i as u64, 5);
    }
}

/// With LoRA adapters on every target the fast path gives the adapters' gradients (and only
/// theirs: the base is frozen) equal to autograd's. `B` is set away from its zero start so that
/// `A` has a gradient too.
#[test]
fn fast_pass_matches_autograd_with_lora_adapters() {
    use recap_runtime::model::{LoraSpec, LoraTarget};
    for (i, targets) in [
        &LoraTarget::ALL[..],
        &[LoraTarget::VProj, LoraTarget::DownProj],
    ]
    .into_iter()
    .enumerate()
    {
        let config = tiny_config(Family::Qwen2, i == 0);
        let model = Model::tiny(&config, 21, DType::F32, &Device::Cpu)
            .unwrap()
            .with_lora(LoraSpec {
                rank: 4,
                alpha: 8.0,
                targets: targets.to_vec(),
                seed: 3,
            })
            .unwrap();
        let mut rng = Lcg(40 + i as u64);
        for (name, var) in model.varmap().unwrap().data().lock().unwrap().iter() {
            if name.contains("lora_B") {
                let v: Vec<f32> = (0..var.elem_count()).map(|_| 0.3 * rng.coef()).collect();
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        assert_eq!(model.trainable_vars().len(), 2 * 2 * targets.len());
        check(&model, 60 + i as u64, 5);
    }
}

#[test]
fn fast_pass_matches_autograd_on_the_fixture() {
    let model = load_hf_dir(fixture(), &Device::Cpu).unwrap();
    check(&model, 7, 6);
}

/// Rows that exercise the packing: a one-token prompt with an empty completion (a real token
/// that attends only to itself), identical rows, a row without any padding, and a completion
/// that fills the last column.
#[test]
fn fast_pass_matches_autograd_on_edge_rows() {
    let model = Model::tiny(
        &tiny_config(Family::Qwen2, true),
        5,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let prompts = vec![
        vec![7],
        vec![3, 4, 5, 6],
        vec![3, 4, 5, 6],
        vec![9, 8],
        vec![1, 2, 3, 4],
    ];
    let comps = vec![
        vec![],
        vec![10, 11, 12],
        vec![10, 11, 12],
        vec![13],
        vec![20, 21, 22],
    ];
    let mut rng = Lcg(9);
    check_batch(&model, &pack(&prompts, &comps), &mut rng);
    // One row alone: no padding at all.
    check_batch(&model, &pack(&prompts[1..2], &comps[1..2]), &mut rng);
}

/// Completions sampled at a temperature are scored at it: the logits are divided by it before
/// the log-softmax on both paths (log-probs and gradients agree), and a huge temperature gives
/// the uniform distribution's log-prob, `-ln(vocab)`.
#[test]
fn logprobs_divide_the_logits_by_the_sampling_temperature() {
    let model = Model::tiny(
        &tiny_config(Family::Qwen2, true),
        5,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let vocab = model.config().vocab_size;
    let mut rng = Lcg(33);
    let plain = batch(&mut rng, vocab, 4);
    let hot = batch(&mut Lcg(33), vocab, 4).with_temperature(0.7).unwrap();
    check_batch(&model, &hot, &mut rng);
    let (a, b) = (
        flat(&token_logprobs(&model, &plain).unwrap()),
        flat(&token_logprobs(&model, &hot).unwrap()),
    );
    assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 1e-3));
    let flat_batch = batch(&mut Lcg(33), vocab, 4).with_temperature(1e6).unwrap();
    let uniform = -(vocab as f32).ln();
    let mask = flat(&flat_batch.completion_mask);
    for lp in [
        flat(&token_logprobs(&model, &flat_batch).unwrap()),
        fast::logprobs(&model, &flat_batch).unwrap(),
    ] {
        for (x, m) in lp.iter().zip(&mask) {
            if *m > 0.0 {
                assert!((x - uniform).abs() < 1e-3, "{x} vs {uniform}");
            }
        }
    }
    assert!(batch(&mut Lcg(1), vocab, 2).with_temperature(0.0).is_err());
}

/// The reference pass runs on frozen copies (plain tensors, no `Var`s).
#[test]
fn fast_logprobs_of_a_frozen_copy_match() {
    let model = load_hf_dir(fixture(), &Device::Cpu).unwrap();
    let frozen = model.frozen_copy().unwrap();
    let mut rng = Lcg(21);
    let b = batch(&mut rng, model.config().vocab_size, 4);
    let want = flat(&token_logprobs(&frozen, &b).unwrap());
    let got = flat(&fast::logprobs_tensor(&frozen, &b).unwrap());
    for (a, w) in got.iter().zip(&want) {
        assert!((a - w).abs() <= 1e-5, "fast {a} vs candle {w}");
    }
}

#[test]
fn fast_pass_refuses_other_dtypes() {
    let model = Model::tiny(
        &tiny_config(Family::Llama, true),
        1,
        DType::F64,
        &Device::Cpu,
    )
    .unwrap();
    assert!(!fast::supported(&model));
    let mut rng = Lcg(3);
    let b = batch(&mut rng, 56, 2);
    assert!(fast::forward(&model, &b).is_err());
}
