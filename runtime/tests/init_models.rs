//! Models from a config alone (`init(config, seed)`): the shipped configs give exactly the
//! upstream parameter counts, a built model holds them, and a run builds the policy from a
//! config with the errors a wrong config or tokenizer should give.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use recap_compiler::{check, CheckOptions, Host};
use recap_runtime::engine::{run, ProgressMode, RunOptions};
use recap_runtime::model::init::parameter_count;
use recap_runtime::model::{weight_shapes, Family, Model, ModelConfig};

fn config(name: &str) -> ModelConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(name);
    ModelConfig::from_file(&path).unwrap()
}

#[test]
fn shipped_configs_have_the_upstream_parameter_counts() {
    for (file, family, tied, upstream) in [
        ("qwen2.5-0.5b.json", Family::Qwen2, true, 494_032_768u128),
        ("qwen2.5-1.5b.json", Family::Qwen2, true, 1_543_714_304),
        ("smollm2-135m.json", Family::Llama, true, 134_515_008),
    ] {
        let c = config(file);
        assert_eq!((c.family, c.tie_word_embeddings), (family, tied), "{file}");
        assert_eq!(parameter_count(&c), upstream, "{file}");
        // What a build allocates: every tensor of the weight list.
        let listed: u128 = weight_shapes(&c)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u128)
            .sum();
        assert_eq!(listed, upstream, "{file}");
    }
}

/// Qwen2.5-7B's config: read where this machine can hold its f32 weights, refused by the load
/// bound where it cannot; its sizes are read either way.
#[test]
fn the_7b_config_has_the_upstream_parameter_count() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs/qwen2.5-7b.json");
    let c = ModelConfig::sizes_from_file(&path).unwrap();
    assert_eq!((c.family, c.tie_word_embeddings), (Family::Qwen2, false));
    assert_eq!((c.rope_theta, c.rms_norm_eps), (1e6, 1e-6));
    assert_eq!(c.max_position_embeddings, 32768);
    assert!(c.validate().is_ok() || c.validate().unwrap_err().contains("machine's"));
    assert_eq!(parameter_count(&c), 7_615_616_512);
    match ModelConfig::from_file(&path) {
        Ok(read) => assert_eq!(parameter_count(&read), 7_615_616_512),
        Err(e) => assert!(e.to_string().contains("machine's"), "{e}"),
    }
}

#[test]
fn a_built_smollm2_holds_the_upstream_parameter_count() {
    let c = config("smollm2-135m.json");
    let m = Model::from_config_seeded(&c, 1, DType::F32, &Device::Cpu).unwrap();
    let n: usize = m.trainable_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(n, 134_515_008);
}

struct Fs(PathBuf);

impl Host for Fs {
    fn file_exists(&self, path: &str) -> bool {
        self.0.join(path).exists()
    }
}

/// Dry-runs a one-step GRPO job on `init(<config>)` in `dir`, with `extra` arguments.
fn dry_run(dir: &Path, extra: &str) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("rows.jsonl"),
        "{\"q\":\"1+1=\",\"a\":\"2\"}\n{\"q\":\"2+2=\",\"a\":\"4\"}\n",
    )
    .unwrap();
    let src = format!(
        r#"model policy = init("config.json", seed = 2{extra})
source s = jsonl("rows.jsonl") {{ prompt = "{{q}}", answer = field("a") }}
verifier lead = numeric(extract = leading_integer)
objective rl = grpo(s) {{ rewards = [lead], group = 2, max_tokens = 4, ignore_eos = true }}
train {{ steps = 1, prompts_per_step = 2 }}
"#
    );
    let out = check(
        "p.recap",
        &src,
        &CheckOptions::default(),
        &Fs(dir.to_path_buf()),
    );
    let plan = out.plan.unwrap_or_else(|| panic!("{:?}", out.diagnostics));
    run(
        &plan,
        &RunOptions {
            dry_run: true,
            base_dir: dir.to_path_buf(),
            progress: ProgressMode::Quiet,
            ..RunOptions::default()
        },
    )
    .map(|_| ())
}

fn write_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 64,
        "max_position_embeddings": 128,
        "tie_word_embeddings": false,
        "initializer_range": 0.05
    });
    edit(&mut v);
    std::fs::write(dir.join("config.json"), v.to_string()).unwrap();
}

fn err(r: anyhow::Result<()>) -> String {
    format!("{:#}", r.expect_err("the run should fail"))
}

#[test]
fn a_run_builds_the_policy_from_a_config() {
    let d = tempfile::tempdir().unwrap();
    write_config(d.path(), |_| {});
    dry_run(d.path(), "").unwrap();
}

#[test]
fn wrong_configs_and_tokenizers_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    // No config at all.
    let e = err(dry_run(d.path(), ""));
    assert!(e.contains("config.json"), "{e}");
    // Not JSON.
    std::fs::write(d.path().join("config.json"), "{ nope").unwrap();
    let e = err(dry_run(d.path(), ""));
    assert!(e.contains("invalid JSON"), "{e}");
    // A family this runtime does not implement.
    write_config(d.path(), |v| {
        v["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
        v["model_type"] = "gpt2".into();
    });
    let e = err(dry_run(d.path(), ""));
    assert!(
        e.contains("unknown architecture") && e.contains("GPT2LMHeadModel"),
        "{e}"
    );
    // Implausible sizes: refused before anything is allocated, with the bound named.
    write_config(d.path(), |v| v["hidden_size"] = 1_000_000_000u64.into());
    let e = err(dry_run(d.path(), ""));
    assert!(e.contains("load bound"), "{e}");
    // A tokenizer larger than the embedding (the character tokenizer has 56 tokens).
    write_config(d.path(), |v| v["vocab_size"] = 8.into());
    let e = err(dry_run(d.path(), ""));
    assert!(e.contains("vocab_size") && e.contains("tokenizer"), "{e}");
    // A tokenizer file that is not one.
    write_config(d.path(), |_| {});
    std::fs::write(d.path().join("tok.json"), "[]").unwrap();
    let e = err(dry_run(d.path(), r#", tokenizer = "tok.json""#));
    assert!(e.contains("tok.json"), "{e}");
}
