//! Tests of the public API beyond the fixtures: the stdlib reads cleanly and documents every
//! entry, `--set` overrides reach the plan, checking is deterministic, graphs render in every
//! format, and checking stays linear in the size of the file.

use recap_compiler::{
    check, render_graph, stdlib_docs, AssumeFilesExist, CheckOptions, GraphFormat,
};

const GSM: &str = include_str!("fixtures/valid/gsm8k_recap.recap");

/// `init` models, the `leading_integer` extractor and `ignore_eos` reach the plan as written,
/// with the stdlib's defaults where left out.
#[test]
fn init_leading_integer_and_ignore_eos_lower_into_the_plan() {
    use recap_plan::{Dtype, ExtractStep, ModelSpec, VerifierSpec};
    let src = r#"
model policy = init("configs/c.json", seed = 3, dtype = bf16, tokenizer = "t.json")
model base = frozen(policy)
source s = jsonl("rows.jsonl") { prompt = "{q}", answer = field("a") }
verifier lead = numeric(extract = leading_integer)
objective rl = grpo(s) { rewards = [lead], ignore_eos = true, kl = kl(base) }
objective plain = grpo(s) { rewards = [lead], max_tokens = 8 }
train { steps = 1 }
"#;
    let out = check("p.recap", src, &CheckOptions::default(), &AssumeFilesExist);
    let plan = out.plan.unwrap_or_else(|| panic!("{:?}", out.diagnostics));
    let spec = |name: &str| &plan.models.iter().find(|m| m.name == name).unwrap().spec;
    assert_eq!(
        spec("policy"),
        &ModelSpec::Init {
            config: "configs/c.json".into(),
            seed: 3,
            dtype: Dtype::Bf16,
            tokenizer: Some("t.json".into()),
        }
    );
    let defaults = src.replace(
        r#"init("configs/c.json", seed = 3, dtype = bf16, tokenizer = "t.json")"#,
        r#"init("configs/d.json")"#,
    );
    let out = check(
        "p.recap",
        &defaults,
        &CheckOptions::default(),
        &AssumeFilesExist,
    );
    let plan2 = out.plan.unwrap_or_else(|| panic!("{:?}", out.diagnostics));
    assert_eq!(
        &plan2
            .models
            .iter()
            .find(|m| m.name == "policy")
            .unwrap()
            .spec,
        &ModelSpec::Init {
            config: "configs/d.json".into(),
            seed: 0,
            dtype: Dtype::F32,
            tokenizer: None,
        }
    );
    let VerifierSpec::Numeric { extract, .. } = &plan.verifiers[0].spec else {
        panic!("numeric");
    };
    assert_eq!(extract.steps, vec![ExtractStep::LeadingInteger]);
    let mut flags: Vec<bool> = plan.stages[0]
        .rollouts
        .iter()
        .map(|r| r.ignore_eos)
        .collect();
    flags.sort();
    assert_eq!(flags, vec![false, true]);
}

#[test]
fn the_stdlib_reads_cleanly_and_documents_every_entry() {
    let std = recap_compiler::stdlib::stdlib();
    assert!(std.errors.is_empty(), "{:?}", std.errors);
    let docs = stdlib_docs();
    for name in [
        "hf",
        "gguf",
        "tiny",
        "init",
        "frozen",
        "jsonl",
        "arithmetic",
        "regex",
        "exact",
        "numeric",
        "math_equal",
        "choice",
        "iou",
        "length_penalty",
        "tag",
        "after",
        "last_number",
        "leading_integer",
        "grpo",
        "sft",
        "kl",
        "recap",
        "uniform",
        "static",
        "dwa",
        "rlw",
        "round_robin",
        "proportional",
        "weights",
        "coreset",
        "all",
        "adamw",
        "sgd",
        "constant",
        "linear",
        "cosine",
        "every",
        "probe",
        "train",
    ] {
        assert!(docs.iter().any(|d| d.name == name), "stdlib lacks {name}");
    }
    for d in &docs {
        assert!(!d.doc.trim().is_empty(), "{} has no doc comment", d.name);
    }
    let grpo = docs.iter().find(|d| d.name == "grpo").unwrap();
    assert!(
        grpo.signature.contains("group: int = 8 in [2, inf)"),
        "{}",
        grpo.signature
    );
    // `uniform` is both a reweighter and a mixer.
    assert_eq!(docs.iter().filter(|d| d.name == "uniform").count(), 2);
}

#[test]
fn overrides_reach_the_plan() {
    let opts = CheckOptions {
        overrides: vec![("steps".into(), "20".into())],
        missing_files_are_errors: false,
    };
    let out = check("gsm8k-recap.recap", GSM, &opts, &AssumeFilesExist);
    let plan = out.plan.expect("plan");
    assert_eq!(plan.stages[0].train.steps, 20);
    // 10% warm-up of 20 steps.
    assert_eq!(plan.stages[0].train.schedule.warmup_steps, 2);
    let default = check(
        "gsm8k-recap.recap",
        GSM,
        &CheckOptions::default(),
        &AssumeFilesExist,
    );
    assert_ne!(default.plan.unwrap().content_hash, plan.content_hash);
}

#[test]
fn missing_files_are_warnings_for_check_and_errors_for_run() {
    struct Nothing;
    impl recap_compiler::Host for Nothing {
        fn file_exists(&self, _: &str) -> bool {
            false
        }
    }
    let out = check("g.recap", GSM, &CheckOptions::default(), &Nothing);
    assert!(!out.has_errors());
    assert_eq!(
        out.diagnostics
            .iter()
            .filter(|d| d.code == "recap::validate::missing_file")
            .count(),
        4
    );
    let run = CheckOptions {
        missing_files_are_errors: true,
        ..CheckOptions::default()
    };
    assert!(check("g.recap", GSM, &run, &Nothing).has_errors());
}

#[test]
fn a_path_param_checks_only_the_value_in_effect() {
    // The default names a file that does not exist; `--set` replaces it with one that does.
    struct OnlyNew;
    impl recap_compiler::Host for OnlyNew {
        fn file_exists(&self, path: &str) -> bool {
            path != "data/old.jsonl"
        }
    }
    let text = r#"param data: path = "data/old.jsonl"
model policy = tiny()
source chat = jsonl(data) { prompt = "{q}", target = field("a") }
objective learn = sft(chat)
train { steps = 1 }
"#;
    let missing = |opts: &CheckOptions| -> Vec<String> {
        let out = check("p.recap", text, opts, &OnlyNew);
        out.diagnostics
            .iter()
            .filter(|d| d.code == "recap::validate::missing_file")
            .map(|d| d.message.clone())
            .collect()
    };
    let default = missing(&CheckOptions::default());
    assert!(!default.is_empty());
    assert!(default
        .iter()
        .all(|m| m == "the file `data/old.jsonl` does not exist"));
    let set = CheckOptions {
        overrides: vec![("data".into(), "data/new.jsonl".into())],
        missing_files_are_errors: true,
    };
    assert_eq!(missing(&set), Vec::<String>::new());
    let out = check("p.recap", text, &set, &OnlyNew);
    assert!(!out.has_errors(), "{:?}", out.diagnostics);
}

#[test]
fn checking_is_deterministic() {
    let a = check("g.recap", GSM, &CheckOptions::default(), &AssumeFilesExist);
    let b = check("g.recap", GSM, &CheckOptions::default(), &AssumeFilesExist);
    assert_eq!(a.plan, b.plan);
    assert_eq!(a.diagnostics, b.diagnostics);
}

#[test]
fn graphs_render_in_every_format() {
    let plan = check("g.recap", GSM, &CheckOptions::default(), &AssumeFilesExist)
        .plan
        .unwrap();
    let dot = render_graph(&plan, GraphFormat::Dot);
    assert!(dot.starts_with("digraph recap {"));
    assert!(dot.contains("\"main.rollout.math\" -> \"main.verifier.accuracy\";"));
    let mermaid = render_graph(&plan, GraphFormat::Mermaid);
    assert!(mermaid.starts_with("flowchart LR"));
    assert_eq!(mermaid.matches("-->").count(), plan.graph.edges.len());
    let text = render_graph(&plan, GraphFormat::Text);
    assert!(text.contains("main.loss.reasoning"));
}

#[test]
fn all_errors_of_a_file_are_reported_in_one_run() {
    let src = "model policy = hf(\"m\")\nsource s = jsonl(\"d\") { prompt = \"{q}\", answer = field(\"a\") }\n\
               verifier v = numeric()\nobjective a = grpo(s) { rewards = [v], group = 1 }\n\
               objective b = grpo(s) { rewards = [v], temperature = 0 }\ntrain { steps = 0 }\n";
    let out = check("x.recap", src, &CheckOptions::default(), &AssumeFilesExist);
    let ranges = out
        .diagnostics
        .iter()
        .filter(|d| d.code == "recap::typecheck::out_of_range")
        .count();
    assert_eq!(ranges, 3, "{:#?}", out.diagnostics);
}

/// A pipeline of about `lines` lines: many sources, verifiers and objectives.
fn generated(lines: usize) -> String {
    let mut s = String::from("model policy = hf(\"m\")\nmodel base = frozen(policy)\n");
    let mut i = 0;
    while s.lines().count() < lines {
        s.push_str(&format!(
            "source s{i} = jsonl(\"data/{i}.jsonl\") {{\n  prompt = \"{{question}} #{i}\"\n  answer = field(\"answer\").after(\"####\")\n}}\n\
             verifier v{i} = numeric(extract = tag(\"answer\"), tolerance = 0.001 * 2)\n\
             objective o{i} = grpo(s{i}) {{\n  rewards = [v{i}, 0.5 * v{i}]\n  group = 8\n  kl = kl(base, coef = 0.01)\n}}\n"
        ));
        i += 1;
    }
    s.push_str("reweight recap(window = 10)\nmix uniform\ntrain { steps = 100, schedule = linear(warmup = 10%) }\n");
    s
}

#[test]
fn checking_time_grows_linearly() {
    let small = generated(2_000);
    let large = generated(20_000);
    let time = |src: &str| {
        let mut best = std::time::Duration::MAX;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let out = check(
                "gen.recap",
                src,
                &CheckOptions::default(),
                &AssumeFilesExist,
            );
            best = best.min(t.elapsed());
            assert!(!out.has_errors(), "{:?}", out.diagnostics.first());
        }
        best
    };
    let (a, b) = (time(&small), time(&large));
    // Ten times the lines may take at most 30 times as long (linear with generous noise
    // allowance); a quadratic pass would take about 100 times as long.
    assert!(b < a * 30, "2k lines {a:?}, 20k lines {b:?}");
}

/// RECAP's `alpha` takes the paper's ablation ends 0 and 1, and a `static` weight on a `grpo`
/// objective warns that it cancels in group normalisation while one on an `sft` objective does
/// not.
#[test]
fn recap_alpha_ends_and_static_weights_that_cancel() {
    for alpha in ["0.0", "1.0"] {
        let src = GSM.replace("alpha = 0.5", &format!("alpha = {alpha}"));
        let out = check("g.recap", &src, &CheckOptions::default(), &AssumeFilesExist);
        assert!(!out.has_errors(), "alpha = {alpha}: {:?}", out.diagnostics);
    }
    let static_src = |w: &str| {
        GSM.replace(
            "reweight recap(window = 10, temperature = 5.0, alpha = 0.5)",
            &format!("reweight static({w} = 2.0)"),
        )
    };
    let codes = |src: &str| -> Vec<String> {
        check("g.recap", src, &CheckOptions::default(), &AssumeFilesExist)
            .diagnostics
            .iter()
            .map(|d| d.code.to_string())
            .collect()
    };
    assert!(
        codes(&static_src("reasoning")).contains(&"recap::validate::static_cancels".to_string())
    );
    assert!(!codes(&static_src("recall")).contains(&"recap::validate::static_cancels".to_string()));
}
