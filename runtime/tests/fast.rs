//! The hand-written CPU f32 training pass (`model::fast`) against candle's autograd path: the
//! log-probabilities must equal `token_logprobs`, and the gradient of a random linear loss of
//! them must equal what `loss.backward()` gives for every trainable variable, on tiny Qwen2
//! (with attention biases) and Llama models and on the fixture, with left-padded batches. The
//! same checks hold for candle's autograd pass with chunked logits (`GraphPass`), and for both
//! passes at every chunk size of the logits and with checkpointing.

mod common;
use common::fixture;

use candle_core::{DType, Device, Tensor};
use recap_runtime::model::fast;
use recap_runtime::model::logprob::{token_logprobs, GraphPass, PassOptions, SequenceBatch};
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

/// The checks of [`check`] on a given batch with the default options.
fn check_batch(model: &Model, b: &SequenceBatch, rng: &mut Lcg) {
    check_batch_with(model, b, rng, PassOptions::of(model));
}

/// The largest difference of `got` from `want`, checked against `tol` times the largest
/// magnitude of `want` (`relative`) or `tol` itself.
fn max_diff(what: &str, got: &[f32], want: &[f32], tol: f32, relative: bool) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = if relative {
        want.iter().fold(0f32, |m, v| m.max(v.abs()))
    } else {
        1.0
    };
    assert!(scale > 0.0, "{what}: the reference is zero");
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= tol * scale,
        "{what}: max difference {err} against max magnitude {scale}"
    );
    err / scale
}

/// Checks that `got` holds exactly one gradient per trainable variable, each within 1e-4 of the
/// largest magnitude of candle's; gives the largest relative difference.
fn check_grads(
    what: &str,
    model: &Model,
    got: &[(Tensor, Tensor)],
    want: &candle_core::backprop::GradStore,
) -> f32 {
    let vars = model.trainable_vars();
    assert_eq!(got.len(), vars.len(), "{what}: one gradient per variable");
    let mut worst = 0f32;
    for var in &vars {
        let Some((_, g)) = got.iter().find(|(w, _)| w.id() == var.as_tensor().id()) else {
            panic!(
                "{what}: variable of shape {:?} got no gradient",
                var.shape()
            );
        };
        assert_eq!(g.dims(), var.dims());
        let w = flat(want.get(var.as_tensor()).expect("candle gradient"));
        let label = format!("{what}: gradient of {:?}", var.shape());
        worst = worst.max(max_diff(&label, &flat(g), &w, 1e-4, true));
    }
    worst
}

/// The checks of [`check`] on a given batch, both passes run with `opts`; prints the largest
/// errors seen.
fn check_batch_with(model: &Model, b: &SequenceBatch, rng: &mut Lcg, opts: PassOptions) {
    let (n, l) = b.completion_ids.dims2().unwrap();

    // (a) Log-probabilities, all positions (padding ones included).
    let reference = token_logprobs(model, b).unwrap();
    let ff = fast::forward_opts(model, b, opts).unwrap();
    let gp = GraphPass::forward(model, b, opts).unwrap();
    let want = flat(&reference);
    let worst_logp = max_diff("fast logp", ff.logp(), &want, 1e-5, false);
    let worst_graph = max_diff("graph logp", &flat(gp.logp()), &want, 1e-5, false);
    let no_save = fast::logprobs(model, b).unwrap();
    let same = no_save
        .iter()
        .zip(ff.logp())
        .all(|(a, b)| (a - b).abs() <= 1e-6);
    assert!(same, "the no-save forward must give the same values");

    // (b) Gradients of L = sum(logp * c * mask), (c) one per trainable variable.
    let coefs: Vec<f32> = (0..n * l).map(|_| rng.coef()).collect();
    let c = Tensor::from_vec(coefs.clone(), (n, l), &Device::Cpu).unwrap();
    let weights = (c * &b.completion_mask).unwrap();
    let loss = (&reference * &weights).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let dlogp = flat(&weights);
    let fast_grads = ff.backward(&dlogp).unwrap();
    let worst_grad = check_grads("fast", model, &fast_grads, &grads);
    let graph_grads = gp.backward(&weights).unwrap();
    let worst_graph_grad = check_grads("graph", model, &graph_grads, &grads);

    eprintln!(
        "{n} rows x {l}, {opts:?}: largest logp difference fast {worst_logp:e}, graph \
         {worst_graph:e}; largest gradient difference fast {worst_grad:e}, graph \
         {worst_graph_grad:e} of the gradient's largest magnitude"
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
    let var = candle_core::Var::from_tensor(gp.logp()).unwrap();
    let loss3 = (var.as_tensor() * &weights).unwrap().sum_all().unwrap();
    let store = gp.loss_backward(&loss3, var.as_tensor()).unwrap();
    for (w, g) in &graph_grads {
        let s = store.get(w).expect("weight in the store");
        assert_eq!(flat(s), flat(g));
    }
}

/// The logits made a few positions at a time (one, three, all) give the log-probabilities and
/// gradients of the whole composition on both passes, tied and untied heads, at a sampling
/// temperature, with and without checkpointing.
#[test]
fn chunked_logits_match_the_whole_composition() {
    for (i, (family, tied)) in [(Family::Qwen2, true), (Family::Llama, false)]
        .into_iter()
        .enumerate()
    {
        let model = Model::tiny(
            &tiny_config(family, tied),
            40 + i as u64,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let vocab = model.config().vocab_size;
        for (rows, checkpointing) in [(1, false), (3, false), (1000, false), (3, true)] {
            let mut rng = Lcg(70 + rows as u64);
            let b = batch(&mut rng, vocab, 5).with_temperature(0.7).unwrap();
            let opts = PassOptions {
                logit_rows: rows,
                checkpointing,
            };
            check_batch_with(&model, &b, &mut rng, opts);
        }
    }
    // The default chunk covers a fixed number of logits whatever the vocabulary.
    let opts = PassOptions::for_vocab(151_936);
    assert_eq!(opts.logit_rows, (1 << 22) / 151_936);
    assert_eq!(PassOptions::for_vocab(1 << 30).logit_rows, 1);
}

/// Checkpointing changes no gradient: the fast pass makes each block again with the same
/// arithmetic (equal to the bit), candle's pass within float tolerance; on the fixture, whose
/// packing has lone rows and a cut last block.
#[test]
fn checkpointing_gives_the_gradients_of_the_whole_pass() {
    let model = load_hf_dir(fixture(), &Device::Cpu).unwrap();
    let mut rng = Lcg(5);
    let b = batch(&mut rng, model.config().vocab_size, 6);
    let (n, l) = b.completion_ids.dims2().unwrap();
    let dlogp: Vec<f32> = (0..n * l).map(|_| rng.coef()).collect();
    let plain = PassOptions::of(&model);
    let ckpt = plain.with_checkpointing(true);
    let whole = fast::forward_opts(&model, &b, plain).unwrap();
    let remade = fast::forward_opts(&model, &b, ckpt).unwrap();
    assert_eq!(whole.logp(), remade.logp());
    let (g0, g1) = (
        whole.backward(&dlogp).unwrap(),
        remade.backward(&dlogp).unwrap(),
    );
    for ((w0, a), (w1, b)) in g0.iter().zip(&g1) {
        assert_eq!(w0.id(), w1.id());
        assert_eq!(flat(a), flat(b), "fast gradient of {:?}", w0.dims());
    }
    let dl = Tensor::from_vec(dlogp, (n, l), &Device::Cpu).unwrap();
    let whole = GraphPass::forward(&model, &b, plain).unwrap();
    let remade = GraphPass::forward(&model, &b, ckpt).unwrap();
    assert_eq!(flat(whole.logp()), flat(remade.logp()));
    let (g0, g1) = (whole.backward(&dl).unwrap(), remade.backward(&dl).unwrap());
    assert_eq!(g0.len(), model.trainable_vars().len());
    assert_eq!(g0.len(), g1.len());
    for ((w0, a), (w1, b)) in g0.iter().zip(&g1) {
        assert_eq!(w0.id(), w1.id());
        let label = format!("graph gradient of {:?}", w0.dims());
        max_diff(&label, &flat(b), &flat(a), 1e-5, true);
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

/// The pass splits rows, segments and vocabulary rows across rayon's threads but no reduction,
/// so one thread and four give the same bits: log-probabilities and every gradient, with and
/// without checkpointing. The batch is large enough (24 rows of up to 48 tokens, hidden 64)
/// that the row-wise loops are split into several tasks.
#[test]
fn the_pass_gives_the_same_bits_on_any_number_of_threads() {
    let mut config = ModelConfig::new(Family::Qwen2, 56, 64, 128, 2, 4, 2, true);
    config.max_position_embeddings = 64;
    config.pad_token_id = Some(0);
    let model = Model::tiny(&config, 5, DType::F32, &Device::Cpu).unwrap();
    let mut rng = Lcg(17);
    let (mut prompts, mut comps) = (Vec::new(), Vec::new());
    for _ in 0..24 {
        let (pl, cl) = (8 + rng.below(24), 1 + rng.below(16));
        prompts.push(
            (0..pl)
                .map(|_| 1 + rng.below(55) as u32)
                .collect::<Vec<_>>(),
        );
        comps.push(
            (0..cl)
                .map(|_| 1 + rng.below(55) as u32)
                .collect::<Vec<_>>(),
        );
    }
    let b = pack(&prompts, &comps);
    let (n, l) = b.completion_ids.dims2().unwrap();
    let dlogp: Vec<f32> = (0..n * l).map(|_| rng.coef()).collect();
    for checkpointing in [false, true] {
        let opts = PassOptions {
            checkpointing,
            ..PassOptions::of(&model)
        };
        let pass = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let ff = fast::forward_opts(&model, &b, opts).unwrap();
                let grads: Vec<Vec<u32>> = ff
                    .backward(&dlogp)
                    .unwrap()
                    .iter()
                    .map(|(_, g)| flat(g).iter().map(|v| v.to_bits()).collect())
                    .collect();
                let logp: Vec<u32> = ff.logp().iter().map(|v| v.to_bits()).collect();
                (logp, grads)
            })
        };
        let (one, four) = (pass(1), pass(4));
        assert_eq!(one.0, four.0, "log-probs, checkpointing {checkpointing}");
        assert_eq!(one.1.len(), four.1.len());
        for (i, (a, b)) in one.1.iter().zip(&four.1).enumerate() {
            assert_eq!(a, b, "gradient {i}, checkpointing {checkpointing}");
        }
    }
}
