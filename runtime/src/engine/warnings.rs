//! Warnings of what is silently wrong: takes the plan, the loaded policy's tokenizer and each
//! step's reward groups; gives lines for the terminal and for the step records. Nothing here
//! stops a run: each warning names a setting that trains, just not as the user meant.

use std::collections::BTreeSet;

use candle_core::Device;
use recap_plan::{Dtype, ModelSpec, Plan, VerifierSpec};
use regex_syntax::hir::{Class, Hir, HirKind};

use crate::tokenizer::TextTokenizer;

/// Steps in a row with every group's rewards equal before the run warns that it has no
/// learning signal, and again after each further such run of steps. A constant rather than a
/// `train` setting: it changes no result, only when a line is printed, and a setting would
/// carry it through the plan format and every plan hash for that.
pub(crate) const NO_SIGNAL_STEPS: u64 = 10;

/// Counts steps in a row whose GRPO groups all had equal rewards (so zero advantages: GRPO
/// learns nothing from them). Checkpoints keep the count, so a resumed run warns where an
/// uninterrupted one would.
pub(crate) fn no_signal(streak: &mut u64, groups: usize, flat_groups: usize) -> Option<String> {
    if groups == 0 || flat_groups < groups {
        *streak = 0;
        return None;
    }
    *streak += 1;
    streak.is_multiple_of(NO_SIGNAL_STEPS).then(|| {
        format!(
            "no learning signal: every group's rewards were equal for {streak} steps, so every \
             advantage was zero; check that the rewards can tell completions apart (a format \
             the model can produce, the right answer field) or raise `group` or `temperature`"
        )
    })
}

/// Warnings a plan earns once its models are loaded on `device`.
pub(crate) fn at_load(plan: &Plan, device: &Device, tok: &TextTokenizer) -> Vec<String> {
    let mut out = Vec::new();
    if !device.is_cuda() {
        for m in &plan.models {
            let dtype = match &m.spec {
                ModelSpec::Hf { dtype, .. } | ModelSpec::Gguf { dtype, .. } => *dtype,
                _ => continue,
            };
            if dtype != Dtype::F32 {
                out.push(format!(
                    "model `{}`: dtype = {} is ignored on the CPU: its weights and arithmetic \
                     stay f32 (a half dtype is a compute dtype, used on CUDA only)",
                    m.name,
                    dtype_name(dtype)
                ));
            }
        }
    }
    let chars = vocabulary_chars(tok);
    for v in &plan.verifiers {
        let VerifierSpec::Regex { pattern, .. } = &v.spec else {
            continue;
        };
        let missing: String = required_chars(pattern)
            .into_iter()
            .filter(|c| !(chars.contains(c) || !c.is_ascii() && chars.contains(&'\u{FFFD}')))
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "verifier `{}`: no completion can ever match `{pattern}`: it needs {:?}, which \
                 the policy's tokenizer cannot produce, so this reward is always 0",
                v.name, missing
            ));
        }
    }
    out
}

fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "f32",
        Dtype::F16 => "f16",
        Dtype::Bf16 => "bf16",
    }
}

/// The characters the tokenizer's tokens decode to, special tokens left out (completions are
/// decoded without them). A token that decodes to a partial UTF-8 sequence (byte-level BPE)
/// makes every non-ASCII character possible, shown by U+FFFD in the set.
fn vocabulary_chars(tok: &TextTokenizer) -> BTreeSet<char> {
    let mut chars = BTreeSet::new();
    for id in 0..tok.vocab_size() as u32 {
        if let Ok(text) = tok.decode(&[id], true) {
            chars.extend(text.chars());
        }
    }
    chars
}

/// The characters every match of `pattern` contains (empty when it does not parse: the
/// checker has refused such patterns already). Found on the pattern's HIR: a literal needs its
/// characters, a concatenation the union of its parts', an alternation what all its branches
/// need, a repetition what its body needs when it must occur at least once; a class of one
/// character is that character, and any other class needs none in particular.
fn required_chars(pattern: &str) -> BTreeSet<char> {
    match regex_syntax::parse(pattern) {
        Ok(hir) => required(&hir),
        Err(_) => BTreeSet::new(),
    }
}

fn required(hir: &Hir) -> BTreeSet<char> {
    match hir.kind() {
        HirKind::Literal(l) => String::from_utf8_lossy(&l.0).chars().collect(),
        HirKind::Class(Class::Unicode(c)) => match c.ranges() {
            [r] if r.start() == r.end() => BTreeSet::from([r.start()]),
            _ => BTreeSet::new(),
        },
        HirKind::Capture(c) => required(&c.sub),
        HirKind::Repetition(r) if r.min > 0 => required(&r.sub),
        HirKind::Concat(parts) => parts.iter().flat_map(required).collect(),
        HirKind::Alternation(branches) => {
            let mut sets = branches.iter().map(required);
            let first = sets.next().unwrap_or_default();
            sets.fold(first, |acc, s| acc.intersection(&s).copied().collect())
        }
        _ => BTreeSet::new(),
    }
}
