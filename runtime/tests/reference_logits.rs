//! recap's model against Hugging Face transformers: loads the fixture-tiny HF directory with
//! recap's loader and checks that the logits of every position equal the reference vector
//! `tests/data/fixture_tiny_reference.json` (made once by `scripts/make-reference-logits.py`
//! with transformers 5.24 and torch 2.15 on the CPU) within 1e-4.

mod common;
use common::fixture;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use recap_runtime::model::{load_hf_dir, load_hf_dir_with, LoadOptions};
use recap_runtime::tokenizer::TextTokenizer;
use serde::Deserialize;

const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Vector {
    vocab_size: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    input_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

fn vector() -> Vector {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/fixture_tiny_reference.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The largest absolute difference between recap's logits and the reference, per case.
fn max_errors(model: &recap_runtime::model::Model, v: &Vector) -> Vec<f32> {
    v.cases
        .iter()
        .map(|case| {
            let ids = Tensor::new(case.input_ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let got: Vec<Vec<f32>> = model
                .forward(&ids, None)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2()
                .unwrap();
            assert_eq!(got.len(), case.logits.len(), "{}: positions", case.text);
            got.iter()
                .zip(&case.logits)
                .flat_map(|(g, w)| {
                    assert_eq!(g.len(), v.vocab_size, "{}: vocab", case.text);
                    g.iter().zip(w).map(|(a, b)| (a - b).abs())
                })
                .fold(0f32, f32::max)
        })
        .collect()
}

#[test]
fn fixture_tiny_logits_match_transformers() {
    let dir = fixture();
    let v = vector();
    assert_eq!(v.cases.len(), 3);

    // The tokenizer gives the ids the reference used (with the fixture's BOS).
    let tok = TextTokenizer::from_dir(&dir).unwrap();
    for case in &v.cases {
        assert_eq!(
            tok.encode(&case.text, true).unwrap(),
            case.input_ids,
            "{}",
            case.text
        );
    }

    let model = load_hf_dir(&dir, &Device::Cpu).unwrap();
    assert_eq!(model.config().vocab_size, v.vocab_size);
    let errors = max_errors(&model, &v);
    println!("largest |recap - transformers| per case: {errors:?}");
    for (case, err) in v.cases.iter().zip(&errors) {
        assert!(
            *err <= TOLERANCE,
            "{}: logits differ from transformers by up to {err}",
            case.text
        );
    }
    // The check has teeth: the logits vary by far more than the tolerance across positions.
    let spread = v.cases[0]
        .logits
        .iter()
        .flatten()
        .fold(0f32, |m, x| m.max(x.abs()));
    assert!(
        spread > 100.0 * TOLERANCE,
        "reference logits too flat: {spread}"
    );

    // The frozen (non-trainable) load gives the same logits.
    let frozen = load_hf_dir_with(
        &dir,
        &LoadOptions {
            trainable: false,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    for err in max_errors(&frozen, &v) {
        assert!(err <= TOLERANCE, "frozen load: {err}");
    }
}
