//! Tests of the model layer: gradients (coverage and finite differences), loading the
//! fixture-tiny HF directory, checkpoint round-trips, batched generation against one-by-one and
//! no-cache generation, seeded sampling, and clear errors for malformed inputs.

mod common;
use common::fixture;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use recap_runtime::checkpoint::save_hf_dir;
use recap_runtime::generate::{generate, generate_on, DecodePath, FinishReason, SamplingConfig};
use recap_runtime::model::logprob::{reference_logprobs, token_logprobs, SequenceBatch};
use recap_runtime::model::{load_hf_dir, Family, Model, ModelConfig, ModelError};
use recap_runtime::tokenizer::{ChatTemplate, TextTokenizer};

fn tiny_config(family: Family, tied: bool) -> ModelConfig {
    let mut c = ModelConfig::new(family, 56, 32, 64, 2, 4, 2, tied);
    c.max_position_embeddings = 64;
    c.eos_token_ids = vec![2];
    c.pad_token_id = Some(0);
    c
}

fn prompts(tok: &TextTokenizer, texts: &[&str]) -> Vec<Vec<u32>> {
    texts
        .iter()
        .map(|t| tok.encode_prompt(t).unwrap())
        .collect()
}

#[test]
fn every_trainable_tensor_gets_a_gradient() {
    let tok = TextTokenizer::arithmetic().unwrap();
    for (family, tied) in [
        (Family::Qwen2, true),
        (Family::Qwen2, false),
        (Family::Llama, true),
        (Family::Llama, false),
    ] {
        let model = Model::tiny(&tiny_config(family, tied), 3, DType::F32, &Device::Cpu).unwrap();
        let p = prompts(&tok, &["12+5=", "7*8="]);
        let c = prompts(&tok, &["17", "56 ok"]);
        let pr: Vec<&[u32]> = p.iter().map(Vec::as_slice).collect();
        let cr: Vec<&[u32]> = c.iter().map(Vec::as_slice).collect();
        let batch = SequenceBatch::new(&pr, &cr, 0, &Device::Cpu).unwrap();
        let lp = token_logprobs(&model, &batch).unwrap();
        let loss = (lp * &batch.completion_mask)
            .unwrap()
            .sum_all()
            .unwrap()
            .neg()
            .unwrap();
        let grads = loss.backward().unwrap();
        let vars = model.varmap().unwrap().data().lock().unwrap().clone();
        let expected = recap_runtime::model::weight_shapes(model.config()).len();
        assert_eq!(
            vars.len(),
            expected,
            "{family:?} tied={tied}: one Var per weight"
        );
        for (name, var) in vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{family:?} tied={tied}: no gradient for {name}"));
            let norm: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(
                norm > 0.0,
                "{family:?} tied={tied}: zero gradient for {name}"
            );
            assert!(
                norm.is_finite(),
                "{family:?} tied={tied}: non-finite gradient for {name}"
            );
        }
    }
}

/// The masked NLL of a fixed batch under `model` (f64).
fn nll(model: &Model, batch: &SequenceBatch) -> Tensor {
    let lp = token_logprobs(model, batch).unwrap();
    let mask = batch.completion_mask.to_dtype(DType::F64).unwrap();
    (lp * mask).unwrap().sum_all().unwrap().neg().unwrap()
}

#[test]
fn autograd_matches_f64_finite_differences() {
    for family in [Family::Qwen2, Family::Llama] {
        let mut cfg = ModelConfig::new(family, 13, 8, 12, 2, 2, 1, family == Family::Llama);
        cfg.max_position_embeddings = 16;
        let model = Model::tiny(&cfg, 11, DType::F64, &Device::Cpu).unwrap();
        let p: [&[u32]; 2] = [&[1, 4, 5], &[1, 7]];
        let c: [&[u32]; 2] = [&[6, 2], &[8, 9, 3]];
        let batch = SequenceBatch::new(&p, &c, 0, &Device::Cpu).unwrap();
        let grads = nll(&model, &batch).backward().unwrap();
        let vars = model.varmap().unwrap().data().lock().unwrap().clone();
        let mut checked = 0;
        for (name, var) in vars {
            let g: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let orig: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let n = orig.len();
            for idx in [0, n / 3, n / 2, n - 1] {
                let eps = 1e-5;
                let eval = |delta: f64| -> f64 {
                    let mut v = orig.clone();
                    v[idx] += delta;
                    let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                    var.set(&t).unwrap();
                    let l: f64 = nll(&model, &batch).to_scalar().unwrap();
                    l
                };
                let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
                var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let ad = g[idx];
                assert!(
                    (ad - fd).abs() <= 1e-6 + 1e-5 * fd.abs(),
                    "{family:?} {name}[{idx}]: autograd {ad} vs finite difference {fd}"
                );
                checked += 1;
            }
        }
        assert!(checked > 40, "{family:?}: only {checked} entries checked");
    }
}

fn logits_of(model: &Model, ids: &[u32]) -> Vec<Vec<f32>> {
    let t = Tensor::from_vec(ids.to_vec(), (1, ids.len()), model.device()).unwrap();
    model
        .forward(&t, None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

#[test]
fn fixture_loads_and_checkpoint_round_trips_bit_exact() {
    let dir = fixture();
    let model = load_hf_dir(&dir, &Device::Cpu).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let c = model.config();
    assert_eq!(c.family, Family::Qwen2);
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads
        ),
        (56, 128, 4, 4)
    );
    assert_eq!(c.num_key_value_heads, 2);
    assert!(c.tie_word_embeddings);
    let n_params: usize = model
        .named_weights()
        .iter()
        .map(|(_, t)| t.elem_count())
        .sum();
    assert_eq!(n_params, 992_384);

    let ids = tok.encode_prompt("59+63=").unwrap();
    assert_eq!(
        ids,
        vec![1, 9, 13, 14, 10, 7, 17],
        "fixture tokenizer adds <bos>"
    );
    // The tokenizer built in code agrees with the fixture's file.
    assert_eq!(
        TextTokenizer::arithmetic()
            .unwrap()
            .encode_prompt("59+63=")
            .unwrap(),
        ids
    );
    let before = logits_of(&model, &ids);
    assert_eq!((before.len(), before[0].len()), (ids.len(), 56));
    assert!(before.iter().flatten().all(|x| x.is_finite()));

    let out = tempfile::tempdir().unwrap();
    save_hf_dir(&model, Some(&tok), out.path()).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.path().join(f).exists(), "{f} not written");
    }
    let bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get("format"))
            .map(String::as_str),
        Some("pt")
    );
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        st.tensor("lm_head.weight").is_err(),
        "tied head must be left out"
    );
    assert_eq!(st.len(), 4 * 12 + 2);

    let again = load_hf_dir(out.path(), &Device::Cpu).unwrap();
    let strip = |c: &ModelConfig| ModelConfig {
        extra: Default::default(),
        ..c.clone()
    };
    assert_eq!(strip(again.config()), strip(model.config()));
    for ((n1, t1), (n2, t2)) in model.named_weights().iter().zip(again.named_weights()) {
        assert_eq!(n1, &n2);
        let a: Vec<f32> = t1.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = t2.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{n1} differs"
        );
    }
    let after = logits_of(&again, &ids);
    let bits = |v: &Vec<Vec<f32>>| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&before),
        bits(&after),
        "logits must round-trip bit-exact"
    );

    // The saved config keeps the keys this runtime does not interpret.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["layer_types"][0], "full_attention");
    assert_eq!(cfg["architectures"][0], "Qwen2ForCausalLM");
    let tok2 = TextTokenizer::from_dir(out.path()).unwrap();
    assert_eq!(tok2.encode_prompt("59+63=").unwrap(), ids);
    assert_eq!((tok2.pad_id, tok2.eos_ids.clone()), (0, vec![2]));
}

#[test]
fn untied_llama_round_trips_with_lm_head() {
    let model = Model::tiny(
        &tiny_config(Family::Llama, false),
        5,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    save_hf_dir(&model, None, out.path()).unwrap();
    let bytes = std::fs::read(out.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensor("lm_head.weight").is_ok());
    assert!(st.tensor("model.layers.0.self_attn.q_proj.bias").is_err());
    let again = load_hf_dir(out.path(), &Device::Cpu).unwrap();
    let ids = [1u32, 5, 6, 7];
    assert_eq!(logits_of(&model, &ids), logits_of(&again, &ids));
}

/// Greedy continuation by repeated full forwards with no cache and no padding.
fn greedy_no_cache(model: &Model, prompt: &[u32], max_new: usize, eos: u32) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..max_new {
        let logits = logits_of(model, &seq);
        let last = logits.last().unwrap();
        let mut best = 0;
        for (i, &x) in last.iter().enumerate() {
            if x > last[best] {
                best = i;
            }
        }
        out.push(best as u32);
        seq.push(best as u32);
        if best as u32 == eos {
            break;
        }
    }
    out
}

fn check_batched_greedy(model: &Model, tok: &TextTokenizer, texts: &[&str]) {
    let ps = prompts(tok, texts);
    let cfg = SamplingConfig {
        max_new_tokens: 12,
        greedy: true,
        ..SamplingConfig::default()
    };
    let batched = generate(model, Some(tok), &ps, 3, &cfg).unwrap();
    assert_eq!(batched.completion_ids.len(), ps.len() * 3);
    // The tensor decode path (used off CPU) agrees with the host kernel.
    let tensor_path = generate_on(model, Some(tok), &ps, 3, &cfg, DecodePath::Tensor).unwrap();
    assert_eq!(tensor_path.completion_ids, batched.completion_ids);
    // So does sampling on the device (what CUDA runs), which only sends the ids to the host.
    let device_path = generate_on(model, Some(tok), &ps, 3, &cfg, DecodePath::Device).unwrap();
    assert_eq!(device_path.completion_ids, batched.completion_ids);
    for path in [&tensor_path, &device_path] {
        for (a, b) in path
            .logprobs
            .iter()
            .flatten()
            .zip(batched.logprobs.iter().flatten())
        {
            assert!((a - b).abs() < 1e-4, "decode paths disagree: {a} vs {b}");
        }
    }
    for (i, p) in ps.iter().enumerate() {
        let alone = generate(model, Some(tok), std::slice::from_ref(p), 1, &cfg).unwrap();
        let reference = greedy_no_cache(model, p, 12, 2);
        assert_eq!(
            alone.completion_ids[0], reference,
            "prompt {i}: cache vs no cache"
        );
        for g in 0..3 {
            assert_eq!(
                batched.completion_ids[i * 3 + g],
                reference,
                "prompt {i} sample {g}: batched vs alone"
            );
        }
    }
}

#[test]
fn sampling_on_the_device_draws_the_host_samplers_tokens() {
    // Without top-k and top-p the device draw is the host's inverse-CDF draw in id order from
    // the same seeded uniforms, so a sampled rollout repeats token for token.
    let dir = fixture();
    let model = load_hf_dir(&dir, &Device::Cpu).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let ps = prompts(&tok, &["12+5=", "7+80=", "3+4="]);
    let cfg = SamplingConfig {
        max_new_tokens: 10,
        temperature: 1.3,
        seed: 7,
        ..SamplingConfig::default()
    };
    let host = generate(&model, Some(&tok), &ps, 4, &cfg).unwrap();
    let device = generate_on(&model, Some(&tok), &ps, 4, &cfg, DecodePath::Device).unwrap();
    assert_eq!(device.completion_ids, host.completion_ids);
    assert_eq!(device.finish, host.finish);
    let distinct: std::collections::HashSet<_> = host.completion_ids.iter().collect();
    assert!(distinct.len() > 2, "the test needs rows that differ");
}

#[test]
fn finished_rows_leave_the_decode_without_changing_the_samples() {
    // Rows that finish early (EOS) must stop costing forwards on every decode path, and the
    // sampler's draws must still go to the same rows: all paths give the host path's tokens.
    let dir = fixture();
    let model = load_hf_dir(&dir, &Device::Cpu).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let ps = prompts(&tok, &["12+5=", "7+80=", "3+4=", "100*20="]);
    let cfg = SamplingConfig {
        max_new_tokens: 24,
        temperature: 1.0,
        seed: 3,
        ..SamplingConfig::default()
    };
    let host = generate(&model, Some(&tok), &ps, 8, &cfg).unwrap();
    let lens: Vec<usize> = host.completion_ids.iter().map(Vec::len).collect();
    let longest = *lens.iter().max().unwrap();
    let n = lens.len();
    let eos = host
        .finish
        .iter()
        .filter(|&&f| f == FinishReason::Eos)
        .count();
    assert!(
        eos >= n / 4 && lens.iter().any(|&l| l + 4 < longest),
        "the test needs rows that finish well before the longest: {lens:?}"
    );
    // The host decoder feeds a row at every step after a token that did not end it.
    let fed: usize = lens.iter().map(|l| l - 1).sum();
    assert_eq!(host.decode_rows, fed);
    for path in [DecodePath::Tensor, DecodePath::Device] {
        let r = generate_on(&model, Some(&tok), &ps, 8, &cfg, path).unwrap();
        assert_eq!(r.completion_ids, host.completion_ids, "{path:?}");
        assert_eq!(r.finish, host.finish, "{path:?}");
        for (a, b) in r
            .logprobs
            .iter()
            .flatten()
            .zip(host.logprobs.iter().flatten())
        {
            assert!((a - b).abs() < 1e-4, "{path:?}: log-probs {a} vs {b}");
        }
        // The tensor path drops finished rows in batches (a quarter of the batch at a time),
        // so it feeds at least the host's rows and fewer than every row at every step.
        assert!(
            r.decode_rows >= fed && r.decode_rows < n * (longest - 1),
            "{path:?}: fed {} row-steps, host {fed}, all rows {}",
            r.decode_rows,
            n * (longest - 1)
        );
    }
}

#[test]
fn batched_left_padded_greedy_matches_alone_and_no_cache() {
    let dir = fixture();
    let model = load_hf_dir(&dir, &Device::Cpu).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    check_batched_greedy(
        &model,
        &tok,
        &["59+63=", "5+3=", "100*20=", "7=", "what is 12+30?"],
    );
    let tok = TextTokenizer::arithmetic().unwrap();
    for family in [Family::Qwen2, Family::Llama] {
        let model = Model::tiny(&tiny_config(family, true), 9, DType::F32, &Device::Cpu).unwrap();
        check_batched_greedy(&model, &tok, &["1+1=", "123*45=", "9="]);
    }
}

#[test]
fn rollout_logprobs_match_the_logprob_pass() {
    let dir = fixture();
    let model = load_hf_dir(&dir, &Device::Cpu).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let ps = prompts(&tok, &["59+63=", "5+3=", "100*20="]);
    let cfg = SamplingConfig {
        max_new_tokens: 10,
        seed: 4,
        ..SamplingConfig::default()
    };
    let r = generate(&model, Some(&tok), &ps, 4, &cfg).unwrap();
    let batch = r.to_batch(tok.pad_id, &Device::Cpu).unwrap();
    let policy: Vec<Vec<f32>> = token_logprobs(&model, &batch).unwrap().to_vec2().unwrap();
    let frozen = model.frozen_copy().unwrap();
    let reference = reference_logprobs(&frozen, &batch).unwrap();
    assert!(!reference.track_op(), "reference log-probs carry no graph");
    assert!(
        !reference_logprobs(&model, &batch).unwrap().track_op(),
        "a trainable model gives graph-free reference log-probs too"
    );
    let reference: Vec<Vec<f32>> = reference.to_vec2().unwrap();
    let mask: Vec<Vec<f32>> = batch.completion_mask.to_vec2().unwrap();
    for row in 0..r.completion_ids.len() {
        assert_eq!(r.logprobs[row].len(), r.completion_ids[row].len());
        for (j, &lp) in r.logprobs[row].iter().enumerate() {
            assert_eq!(mask[row][j], 1.0);
            assert!((policy[row][j] - lp).abs() < 1e-4, "row {row} token {j}");
            assert!((reference[row][j] - lp).abs() < 1e-4, "row {row} token {j}");
        }
        assert!(mask[row][r.logprobs[row].len()..].iter().all(|&m| m == 0.0));
        match r.finish[row] {
            FinishReason::Eos => assert_eq!(*r.completion_ids[row].last().unwrap(), 2),
            FinishReason::Length => assert_eq!(r.completion_ids[row].len(), 10),
            FinishReason::Stop => panic!("no stop strings were set"),
        }
    }
}

#[test]
fn seeded_sampling_repeats_exactly() {
    let dir = fixture();
    let model = load_hf_dir(&dir, &Device::Cpu).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let ps = prompts(&tok, &["59+63=", "15+43=", "75+72="]);
    for (top_p, top_k) in [(1.0, 0), (0.9, 0), (1.0, 10), (0.8, 20)] {
        let cfg = SamplingConfig {
            max_new_tokens: 16,
            temperature: 1.0,
            top_p,
            top_k,
            seed: 42,
            ..SamplingConfig::default()
        };
        let a = generate(&model, Some(&tok), &ps, 8, &cfg).unwrap();
        let b = generate(&model, Some(&tok), &ps, 8, &cfg).unwrap();
        assert_eq!(a.completion_ids, b.completion_ids);
        assert_eq!(a.texts, b.texts);
        assert_eq!(a.logprobs, b.logprobs);
        let c = generate(
            &model,
            Some(&tok),
            &ps,
            8,
            &SamplingConfig { seed: 43, ..cfg },
        )
        .unwrap();
        assert_ne!(
            a.completion_ids, c.completion_ids,
            "another seed must sample differently"
        );
        // Samples of one prompt differ from each other (they are drawn, not copied).
        assert!(a.completion_ids[..8]
            .iter()
            .any(|x| x != &a.completion_ids[0]));
    }
}

#[test]
fn top_k_one_is_greedy_and_stop_strings_end_rows() {
    let dir = fixture();
    let model = load_hf_dir(&dir, &Device::Cpu).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let ps = prompts(&tok, &["59+63=", "5+3="]);
    let greedy = SamplingConfig {
        max_new_tokens: 8,
        greedy: true,
        ..SamplingConfig::default()
    };
    let top1 = SamplingConfig {
        max_new_tokens: 8,
        top_k: 1,
        seed: 1,
        ..SamplingConfig::default()
    };
    let g = generate(&model, Some(&tok), &ps, 2, &greedy).unwrap();
    let k = generate(&model, Some(&tok), &ps, 2, &top1).unwrap();
    assert_eq!(g.completion_ids, k.completion_ids);
    let tiny_p = SamplingConfig {
        top_p: 1e-6,
        ..top1.clone()
    };
    let tp = generate(&model, Some(&tok), &ps, 2, &tiny_p).unwrap();
    assert_eq!(g.completion_ids, tp.completion_ids, "top_p -> 0 is greedy");

    // Stop at the first character the greedy run produces in row 0.
    let first = g.texts[0]
        .chars()
        .next()
        .expect("greedy text is not empty")
        .to_string();
    let stop = SamplingConfig {
        stop_strings: vec![first.clone()],
        ..greedy.clone()
    };
    let s = generate(&model, Some(&tok), &ps, 2, &stop).unwrap();
    assert_eq!(s.finish[0], FinishReason::Stop);
    assert_eq!(s.texts[0], first);
    assert_eq!(s.completion_ids[0].len(), 1);
}

#[test]
fn chat_templates() {
    // A tokenizer_config.json's `chat_template` is rendered (see the tokenizer's unit tests for
    // Qwen2.5 and Llama 3 templates); without one a prompt goes in as it is.
    let cfg = serde_json::json!({"chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"});
    assert_eq!(
        ChatTemplate::from_config(Some(&cfg)).apply("x").unwrap(),
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(ChatTemplate::Raw.apply("59+63=").unwrap(), "59+63=");
    assert_eq!(ChatTemplate::from_config(None), ChatTemplate::Raw);
    let tok = TextTokenizer::char_level("ab").unwrap();
    assert_eq!(tok.vocab_size(), 6);
    let ids = tok.encode_prompt("abba").unwrap();
    assert_eq!(ids, vec![1, 4, 5, 5, 4]);
    assert_eq!(tok.decode(&ids, true).unwrap(), "abba");
}

// ---- malformed inputs ----

fn copy_fixture() -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture().join(f), out.path().join(f)).unwrap();
    }
    out
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(v.as_object_mut().unwrap());
    std::fs::write(&path, v.to_string()).unwrap();
}

fn load_err(dir: &Path) -> String {
    match load_hf_dir(dir, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tolerant_config_parsing() {
    let d = copy_fixture();
    edit_config(d.path(), |m| {
        m.insert("sliding_window".into(), serde_json::Value::Null);
        m.remove("rope_theta");
        m.remove("max_position_embeddings");
        m.remove("num_key_value_heads");
        m.remove("architectures");
        m.insert("num_key_value_heads".into(), 2.into());
        m.insert(
            "rope_parameters".into(),
            serde_json::json!({"rope_theta": 5000.0, "rope_type": "default"}),
        );
    });
    let model = load_hf_dir(d.path(), &Device::Cpu).unwrap();
    assert_eq!(model.config().rope_theta, 5000.0);
    assert_eq!(model.config().max_position_embeddings, 32768);
    assert_eq!(model.config().family, Family::Qwen2);
}

#[test]
fn implausible_hf_config_sizes_are_errors_not_aborts() {
    // Issue 16 item 4: each of these aborted the process while allocating.
    for (key, value) in [
        ("num_hidden_layers", 1_000_000_000u64),
        ("max_position_embeddings", 1_000_000_000_000),
        ("hidden_size", 1_000_000_000),
    ] {
        let d = copy_fixture();
        edit_config(d.path(), |m| {
            m.insert(key.into(), value.into());
            if key == "hidden_size" {
                m.insert("head_dim".into(), 32.into());
            }
        });
        let e = load_err(d.path());
        assert!(
            e.contains("load bound") && e.contains("config.json"),
            "{key}: {e}"
        );
    }
}

#[test]
fn ignore_eos_samples_the_full_budget() {
    let dir = fixture();
    let model = load_hf_dir(&dir, &Device::Cpu).unwrap();
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let ps = prompts(&tok, &["59+63=", "5+3="]);
    // Every id ends a row, so without `ignore_eos` each row stops after one token.
    let every_id_ends = SamplingConfig {
        max_new_tokens: 6,
        eos_token_ids: (0..model.config().vocab_size as u32).collect(),
        seed: 5,
        ..SamplingConfig::default()
    };
    let stopped = generate(&model, Some(&tok), &ps, 2, &every_id_ends).unwrap();
    assert!(stopped.completion_ids.iter().all(|c| c.len() == 1));
    assert!(stopped.finish.iter().all(|f| *f == FinishReason::Eos));
    let full = generate(
        &model,
        Some(&tok),
        &ps,
        2,
        &SamplingConfig {
            ignore_eos: true,
            ..every_id_ends.clone()
        },
    )
    .unwrap();
    assert!(full.completion_ids.iter().all(|c| c.len() == 6));
    assert!(full.finish.iter().all(|f| *f == FinishReason::Length));
}

#[test]
fn missing_config_key_is_named() {
    let d = copy_fixture();
    edit_config(d.path(), |m| {
        m.remove("hidden_size");
    });
    let e = load_err(d.path());
    assert!(
        e.contains("hidden_size") && e.contains("config.json"),
        "{e}"
    );
}

#[test]
fn unknown_architecture_is_named() {
    let d = copy_fixture();
    edit_config(d.path(), |m| {
        m.insert(
            "architectures".into(),
            serde_json::json!(["GPT2LMHeadModel"]),
        );
    });
    let e = load_err(d.path());
    assert!(
        e.contains("GPT2LMHeadModel") && e.contains("unknown architecture"),
        "{e}"
    );
    let d = copy_fixture();
    edit_config(d.path(), |m| {
        m.remove("architectures");
        m.insert("model_type".into(), "mamba".into());
    });
    assert!(load_err(d.path()).contains("mamba"));
}

#[test]
fn wrong_shape_and_missing_tensor_are_named() {
    let d = copy_fixture();
    edit_config(d.path(), |m| {
        m.insert("intermediate_size".into(), 256.into());
    });
    let e = load_err(d.path());
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight") && e.contains("model.safetensors"),
        "{e}"
    );
    assert!(e.contains("[512, 128]") && e.contains("[256, 128]"), "{e}");

    let d = copy_fixture();
    edit_config(d.path(), |m| {
        m.insert("tie_word_embeddings".into(), false.into());
    });
    let e = load_err(d.path());
    assert!(e.contains("lm_head.weight") && e.contains("missing"), "{e}");

    let d = copy_fixture();
    edit_config(d.path(), |m| {
        m.insert("num_hidden_layers".into(), 5.into());
    });
    assert!(load_err(d.path()).contains("model.layers.4."));
}

#[test]
fn truncated_safetensors_is_reported() {
    let d = copy_fixture();
    let path = d.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    for cut in [bytes.len() - 100, bytes.len() / 2, 20, 4] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = load_err(d.path());
        assert!(
            e.contains("model.safetensors") && e.contains("truncated"),
            "{e}"
        );
    }
    std::fs::remove_file(&path).unwrap();
    assert!(load_err(d.path()).contains("model.safetensors"));
    std::fs::write(d.path().join("config.json"), "{ not json").unwrap();
    assert!(load_err(d.path()).contains("invalid JSON"));
}

#[test]
fn sharded_checkpoint_loads() {
    let src = fixture();
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), d.path().join("config.json")).unwrap();
    let all =
        recap_runtime::model::read_safetensors(&src.join("model.safetensors"), |_| true).unwrap();
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let tensors: Vec<(&str, &Tensor)> = part.iter().map(|n| (n.as_str(), &all[*n])).collect();
        safetensors::serialize_to_file(tensors, None, &d.path().join(file)).unwrap();
        for n in part {
            weight_map.insert(n.to_string(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let sharded = load_hf_dir(d.path(), &Device::Cpu).unwrap();
    let single = load_hf_dir(&src, &Device::Cpu).unwrap();
    let ids = [1u32, 9, 13, 14, 10, 7, 17];
    assert_eq!(logits_of(&sharded, &ids), logits_of(&single, &ids));

    // A shard that is gone is named.
    std::fs::remove_file(d.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn bad_generation_inputs_are_errors() {
    let model = Model::tiny(
        &tiny_config(Family::Qwen2, true),
        1,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let cfg = SamplingConfig::default();
    let e = generate(&model, None, &[vec![1, 99]], 1, &cfg).unwrap_err();
    assert!(matches!(e, ModelError::Invalid(_)) && e.to_string().contains("99"));
    assert!(generate(&model, None, &[vec![]], 1, &cfg).is_err());
    assert!(generate(&model, None, &[vec![1]], 0, &cfg).is_err());
    let long = SamplingConfig {
        max_new_tokens: 100,
        ..cfg.clone()
    };
    assert!(generate(&model, None, &[vec![1]], 1, &long)
        .unwrap_err()
        .to_string()
        .contains("max_position_embeddings"));
    let stop = SamplingConfig {
        stop_strings: vec!["x".into()],
        ..cfg
    };
    assert!(generate(&model, None, &[vec![1]], 1, &stop).is_err());
    let empty: [&[u32]; 1] = [&[]];
    assert!(SequenceBatch::new(&empty, &[&[1]], 0, &Device::Cpu).is_err());
}

#[test]
fn model_from_hf_tensors_checks_shapes() {
    let src = fixture();
    let config = ModelConfig::from_file(&src.join("config.json")).unwrap();
    let tensors =
        recap_runtime::model::read_safetensors(&src.join("model.safetensors"), |_| true).unwrap();
    let opts = recap_runtime::model::LoadOptions::default();
    let m =
        Model::from_hf_tensors(config.clone(), tensors.clone(), &opts, Path::new("mem")).unwrap();
    let ids = [1u32, 9, 13, 14, 10, 7, 17];
    let single = load_hf_dir(&src, &Device::Cpu).unwrap();
    assert_eq!(logits_of(&m, &ids), logits_of(&single, &ids));
    let mut bad = tensors;
    bad.insert(
        "model.norm.weight".into(),
        Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap(),
    );
    let e = Model::from_hf_tensors(config, bad, &opts, Path::new("mem.gguf"))
        .err()
        .expect("wrong shape must fail")
        .to_string();
    assert!(
        e.contains("model.norm.weight") && e.contains("mem.gguf"),
        "{e}"
    );
}

#[test]
fn bf16_compute_keeps_f32_master_weights_and_gradients() {
    let dir = fixture();
    let mut model = load_hf_dir(&dir, &Device::Cpu).unwrap();
    let ids = [1u32, 9, 13, 14, 10, 7, 17];
    let full = logits_of(&model, &ids);
    model.set_compute_dtype(DType::BF16).unwrap();
    assert_eq!(model.dtype(), DType::F32);
    let half = logits_of(&model, &ids);
    for (a, b) in full.iter().flatten().zip(half.iter().flatten()) {
        assert!((a - b).abs() < 0.1, "bf16 logits drift: {a} vs {b}");
    }
    let t = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap();
    let loss = model.forward(&t, None).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for var in model.trainable_vars() {
        let g = grads
            .get(var.as_tensor())
            .expect("gradient reaches the f32 master weight");
        assert_eq!(g.dtype(), DType::F32);
    }
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    let cfg = SamplingConfig {
        max_new_tokens: 4,
        greedy: true,
        ..SamplingConfig::default()
    };
    let r = generate(&model, Some(&tok), &[ids.to_vec()], 2, &cfg).unwrap();
    assert_eq!(r.completion_ids[0], r.completion_ids[1]);
}

#[test]
fn frozen_copy_is_independent_of_policy_updates() {
    let model = Model::tiny(
        &tiny_config(Family::Qwen2, true),
        2,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let frozen = model.frozen_copy().unwrap();
    let ids = [1u32, 5, 6, 7];
    let before = logits_of(&frozen, &ids);
    assert_eq!(before, logits_of(&model, &ids));
    for var in model.trainable_vars() {
        var.set(&var.as_tensor().zeros_like().unwrap()).unwrap();
    }
    assert_ne!(logits_of(&model, &ids), before, "the policy changed");
    assert_eq!(logits_of(&frozen, &ids), before, "the frozen copy did not");
    assert!(frozen.trainable_vars().is_empty());
}
