//! Reward verifiers: take a sample (prompt, completion, the source row's fields) and give an
//! [`Outcome`]: a score, or "not applicable" with the reason (never a silent 0).
//!
//! A verifier is built once from a serde [`VerifierConfig`] (regexes compiled, options checked)
//! and then called per sample. Its optional extractor chain (`tag("answer")`, `after("####")`,
//! `last_number`, ...) runs on the completion first; a completion the chain cannot extract from
//! scores 0, because the model failed to produce the required form. A sample whose reference
//! field is missing or malformed is `NotApplicable`, because no score would be honest.
//! [`score_batch`] runs a set of verifiers over a batch and catches panics per call, turning
//! each into a [`VerifierFailure`] that names the verifier and the sample, so one bad call does
//! not kill the run.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The result of one verifier call on one sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Score(f64),
    NotApplicable(String),
}

impl Outcome {
    pub fn score(&self) -> Option<f64> {
        match self {
            Outcome::Score(s) => Some(*s),
            Outcome::NotApplicable(_) => None,
        }
    }

    fn from_bool(ok: bool) -> Self {
        Outcome::Score(if ok { 1.0 } else { 0.0 })
    }
}

/// One sample as the verifiers see it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// A label for error reports, e.g. `math:17` (source and row).
    pub id: &'a str,
    pub prompt: &'a str,
    pub completion: &'a str,
    /// The source row's fields (after the source's field mapping), where references live.
    pub fields: &'a serde_json::Map<String, Value>,
    /// The completion's length in tokens, when the caller knows it (for `length_penalty`).
    pub completion_tokens: Option<usize>,
}

/// A step that takes text and gives the part of it a verifier should judge, or `None` when the
/// text does not contain it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Extractor {
    /// The content of the last `<name>...</name>` pair, trimmed.
    Tag { name: String },
    /// The text after the last occurrence of `marker`, trimmed.
    After { marker: String },
    /// The content of the last `\boxed{...}` (balanced braces).
    Boxed,
    /// The first number in the text (commas between thousands removed).
    FirstNumber,
    /// The last number in the text (commas between thousands removed).
    LastNumber,
}

impl Extractor {
    pub fn apply(&self, text: &str) -> Option<String> {
        match self {
            Extractor::Tag { name } => {
                let open = format!("<{name}>");
                let close = format!("</{name}>");
                let start = text.rfind(&open)? + open.len();
                let end = text[start..].find(&close)? + start;
                Some(text[start..end].trim().to_string())
            }
            Extractor::After { marker } => {
                let at = text.rfind(marker.as_str())? + marker.len();
                Some(text[at..].trim().to_string())
            }
            Extractor::Boxed => last_boxed(text).map(|s| s.trim().to_string()),
            Extractor::FirstNumber => find_numbers(text).first().map(|n| n.text.clone()),
            Extractor::LastNumber => find_numbers(text).last().map(|n| n.text.clone()),
        }
    }
}

/// Applies a chain of extractors in order; `None` as soon as one finds nothing.
pub fn extract_chain(chain: &[Extractor], text: &str) -> Option<String> {
    let mut current = text.to_string();
    for step in chain {
        current = step.apply(&current)?;
    }
    Some(current)
}

/// Which number of the text `numeric` compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberPick {
    /// The number the text starts with (after whitespace); no such number scores 0.
    Leading,
    First,
    #[default]
    Last,
}

/// How `regex` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchMode {
    /// The whole text must match.
    Full,
    /// A match anywhere counts (anchor with `^`/`$` in the pattern where needed).
    #[default]
    Partial,
}

/// What `length_penalty` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthUnit {
    #[default]
    Tokens,
    Words,
    Chars,
}

fn default_true() -> bool {
    true
}
fn default_abs_tol() -> f64 {
    1e-6
}
fn default_math_tol() -> f64 {
    1e-9
}
fn default_letters() -> String {
    "ABCDEFGH".to_string()
}

/// The kind of a verifier and its options. `expected` names the sample field holding the
/// reference answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VerifierKind {
    /// 1 when the text matches `pattern`, else 0.
    Regex {
        pattern: String,
        #[serde(default)]
        mode: MatchMode,
    },
    /// 1 when the text equals the reference after the chosen normalisation.
    Exact {
        expected: String,
        #[serde(default = "default_true")]
        trim: bool,
        #[serde(default)]
        ignore_case: bool,
        #[serde(default)]
        collapse_whitespace: bool,
    },
    /// 1 when the picked number is within `max(abs_tol, rel_tol * |reference|)` of the reference.
    Numeric {
        expected: String,
        #[serde(default)]
        pick: NumberPick,
        #[serde(default = "default_abs_tol")]
        abs_tol: f64,
        #[serde(default)]
        rel_tol: f64,
    },
    /// 1 when the two answers are the same number (exactly for rationals, within `rel_tol` for
    /// irrational values), or the same normalised string when either is not a number.
    MathEqual {
        expected: String,
        #[serde(default = "default_math_tol")]
        rel_tol: f64,
    },
    /// 1 when the chosen option letter equals the reference letter.
    Choice {
        expected: String,
        #[serde(default = "default_letters")]
        letters: String,
    },
    /// IoU of the last `[x1, y1, x2, y2]` box in the text with the reference box, or 1/0 against
    /// `threshold` when given.
    Iou {
        expected: String,
        #[serde(default)]
        threshold: Option<f64>,
    },
    /// DAPO's soft overlong penalty: 0 up to `target`, falling linearly to -1 at `limit`, -1
    /// beyond.
    LengthPenalty {
        #[serde(default)]
        unit: LengthUnit,
        target: usize,
        limit: usize,
    },
}

/// A verifier as declared: a name, a kind, and the extractor chain run on the completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifierConfig {
    pub name: String,
    #[serde(flatten)]
    pub kind: VerifierKind,
    #[serde(default)]
    pub extract: Vec<Extractor>,
}

/// A configuration the verifier cannot be built from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("verifier `{verifier}`: {message}")]
pub struct ConfigError {
    pub verifier: String,
    pub message: String,
}

/// Anything that scores samples; the built-in [`Verifier`] and user code alike.
pub trait Verify: Send + Sync {
    fn name(&self) -> &str;
    fn verify(&self, sample: &Sample) -> Outcome;
}

/// A built verifier: a checked config with its compiled parts.
#[derive(Debug, Clone)]
pub struct Verifier {
    config: VerifierConfig,
    compiled: Option<Regex>,
}

impl Verifier {
    pub fn new(config: VerifierConfig) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            verifier: config.name.clone(),
            message,
        };
        let mut compiled = None;
        match &config.kind {
            VerifierKind::Regex { pattern, mode } => {
                // Wrapping in a group keeps inline flags and alternations inside the anchors.
                let source = match mode {
                    MatchMode::Full => format!(r"\A(?:{pattern})\z"),
                    MatchMode::Partial => pattern.clone(),
                };
                let re = regex::RegexBuilder::new(&source)
                    .size_limit(recap_plan::REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| err(format!("bad pattern `{pattern}`: {e}")))?;
                compiled = Some(re);
            }
            VerifierKind::Numeric {
                abs_tol, rel_tol, ..
            } => {
                if !(abs_tol.is_finite()
                    && *abs_tol >= 0.0
                    && rel_tol.is_finite()
                    && *rel_tol >= 0.0)
                {
                    return Err(err(format!(
                        "tolerances must be finite and >= 0 (abs_tol = {abs_tol}, rel_tol = {rel_tol})"
                    )));
                }
            }
            VerifierKind::MathEqual { rel_tol, .. } => {
                if !(rel_tol.is_finite() && *rel_tol >= 0.0) {
                    return Err(err(format!(
                        "rel_tol must be finite and >= 0, got {rel_tol}"
                    )));
                }
            }
            VerifierKind::Choice { letters, .. } => {
                if letters.is_empty() || !letters.chars().all(|c| c.is_ascii_uppercase()) {
                    return Err(err(format!(
                        "letters must be upper-case ASCII letters, got `{letters}`"
                    )));
                }
                let class = regex::escape(letters);
                compiled = Some(
                    Regex::new(&format!("[{class}]"))
                        .map_err(|e| err(format!("letters `{letters}`: {e}")))?,
                );
            }
            VerifierKind::Iou { threshold, .. } => {
                if let Some(t) = threshold {
                    if !(0.0..=1.0).contains(t) {
                        return Err(err(format!("threshold must be in [0, 1], got {t}")));
                    }
                }
            }
            VerifierKind::LengthPenalty { target, limit, .. } => {
                if limit <= target {
                    return Err(err(format!(
                        "limit ({limit}) must be greater than target ({target})"
                    )));
                }
            }
            VerifierKind::Exact { .. } => {}
        }
        Ok(Verifier { config, compiled })
    }

    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    fn judge(&self, sample: &Sample) -> Outcome {
        let Some(text) = extract_chain(&self.config.extract, sample.completion) else {
            return Outcome::Score(0.0);
        };
        match &self.config.kind {
            VerifierKind::Regex { .. } => {
                let re = self.compiled.as_ref().expect("regex compiled in new()");
                Outcome::from_bool(re.is_match(&text))
            }
            VerifierKind::Exact {
                expected,
                trim,
                ignore_case,
                collapse_whitespace,
            } => {
                let reference = match reference_text(sample, expected) {
                    Ok(r) => r,
                    Err(na) => return na,
                };
                let norm = |s: &str| {
                    let mut s = if *trim {
                        s.trim().to_string()
                    } else {
                        s.to_string()
                    };
                    if *collapse_whitespace {
                        s = s.split_whitespace().collect::<Vec<_>>().join(" ");
                    }
                    if *ignore_case {
                        s = s.to_lowercase();
                    }
                    s
                };
                Outcome::from_bool(norm(&text) == norm(&reference))
            }
            VerifierKind::Numeric {
                expected,
                pick,
                abs_tol,
                rel_tol,
            } => {
                let reference = match reference_text(sample, expected) {
                    Ok(r) => r,
                    Err(na) => return na,
                };
                let Some(want) = parse_single_number(&reference) else {
                    return Outcome::NotApplicable(format!(
                        "field `{expected}` is not a number: `{}`",
                        excerpt(&reference)
                    ));
                };
                let got = match pick {
                    NumberPick::Leading => leading_number(&text),
                    NumberPick::First => find_numbers(&text).first().map(|n| n.value),
                    NumberPick::Last => find_numbers(&text).last().map(|n| n.value),
                };
                Outcome::from_bool(
                    got.is_some_and(|g| (g - want).abs() <= abs_tol.max(rel_tol * want.abs())),
                )
            }
            VerifierKind::MathEqual { expected, rel_tol } => {
                let reference = match reference_text(sample, expected) {
                    Ok(r) => r,
                    Err(na) => return na,
                };
                if reference.trim().is_empty() {
                    return Outcome::NotApplicable(format!("field `{expected}` is empty"));
                }
                Outcome::from_bool(math_equal(&text, &reference, *rel_tol))
            }
            VerifierKind::Choice { expected, letters } => {
                let reference = match reference_text(sample, expected) {
                    Ok(r) => r,
                    Err(na) => return na,
                };
                let Some(want) = single_letter(&reference, letters) else {
                    return Outcome::NotApplicable(format!(
                        "field `{expected}` is not one of the letters {letters}: `{}`",
                        excerpt(&reference)
                    ));
                };
                Outcome::from_bool(extract_choice(&text, letters) == Some(want))
            }
            VerifierKind::Iou {
                expected,
                threshold,
            } => {
                let Some(value) = sample.fields.get(expected).filter(|v| !v.is_null()) else {
                    return Outcome::NotApplicable(format!("sample has no field `{expected}`"));
                };
                let want = match value {
                    Value::Array(items) => {
                        let nums: Option<Vec<f64>> = items.iter().map(Value::as_f64).collect();
                        nums.filter(|n| n.len() == 4)
                            .map(|n| [n[0], n[1], n[2], n[3]])
                    }
                    Value::String(s) => last_box(s),
                    _ => None,
                };
                let Some(want) = want.filter(valid_box) else {
                    return Outcome::NotApplicable(format!(
                        "field `{expected}` is not a box [x1, y1, x2, y2] with x1 < x2, y1 < y2: {}",
                        excerpt(&value.to_string())
                    ));
                };
                let iou = last_box(&text).map_or(0.0, |got| box_iou(&got, &want));
                match threshold {
                    Some(t) => Outcome::from_bool(iou >= *t),
                    None => Outcome::Score(iou),
                }
            }
            VerifierKind::LengthPenalty {
                unit,
                target,
                limit,
            } => {
                let len = match unit {
                    LengthUnit::Chars => text.chars().count(),
                    LengthUnit::Words => text.split_whitespace().count(),
                    LengthUnit::Tokens => match sample.completion_tokens {
                        Some(n) => n,
                        None => {
                            return Outcome::NotApplicable(
                                "the completion's token count is unknown".to_string(),
                            )
                        }
                    },
                };
                Outcome::Score(overlong_penalty(len, *target, *limit))
            }
        }
    }
}

impl Verify for Verifier {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn verify(&self, sample: &Sample) -> Outcome {
        self.judge(sample)
    }
}

/// DAPO's soft overlong punishment: 0 up to `target`, linear down to -1 at `limit`.
fn overlong_penalty(len: usize, target: usize, limit: usize) -> f64 {
    if len <= target {
        0.0
    } else if len >= limit {
        -1.0
    } else {
        (target as f64 - len as f64) / (limit - target) as f64
    }
}

/// The reference answer as text, or the `NotApplicable` outcome saying why there is none.
fn reference_text(sample: &Sample, field: &str) -> Result<String, Outcome> {
    match sample.fields.get(field) {
        None | Some(Value::Null) => Err(Outcome::NotApplicable(format!(
            "sample has no field `{field}`"
        ))),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(other) => Err(Outcome::NotApplicable(format!(
            "field `{field}` is not a string or number: {}",
            excerpt(&other.to_string())
        ))),
    }
}

/// At most 80 characters of `s`, for messages.
fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(80).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// A number found in text: its byte span, its value and its text without thousands commas.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundNumber {
    pub start: usize,
    pub end: usize,
    pub value: f64,
    pub text: String,
}

fn number_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?")
            .expect("number pattern is valid")
    })
}

/// Every number in `text`, in order. Thousands commas (`1,234`) are part of a number; a sign
/// counts only when it does not follow a letter, digit or closing bracket (so `3-5` is 3 and 5).
pub fn find_numbers(text: &str) -> Vec<FoundNumber> {
    let mut out = Vec::new();
    for m in number_regex().find_iter(text) {
        let mut start = m.start();
        let raw = m.as_str();
        let mut body = raw;
        if raw.starts_with(['-', '+']) {
            let prev = text[..start].chars().next_back();
            if prev.is_some_and(|c| c.is_alphanumeric() || matches!(c, ')' | ']' | '}')) {
                start += 1;
                body = &raw[1..];
            }
        }
        let clean: String = body.chars().filter(|&c| c != ',' && c != '+').collect();
        if let Ok(value) = clean.parse::<f64>() {
            if value.is_finite() {
                out.push(FoundNumber {
                    start,
                    end: m.end(),
                    value,
                    text: clean,
                });
            }
        }
    }
    out
}

/// The number `text` starts with (after whitespace), if any.
pub fn leading_number(text: &str) -> Option<f64> {
    let trimmed = text.trim_start();
    let offset = text.len() - trimmed.len();
    find_numbers(text)
        .into_iter()
        .next()
        .filter(|n| n.start == offset || (n.start == offset + 1 && trimmed.starts_with('+')))
        .map(|n| n.value)
}

/// A reference that should be exactly one number (`"1,234"`, `"-3.5"`, `" 42 "`, `"$18"`,
/// `"50%"`, `"7."`).
fn parse_single_number(s: &str) -> Option<f64> {
    let core = s
        .trim()
        .trim_start_matches('$')
        .trim_end_matches(['%', '.'])
        .trim();
    match find_numbers(core).as_slice() {
        [n] if n.start == 0 && n.end == core.len() => Some(n.value),
        _ => None,
    }
}

/// The content of the last `\boxed{...}` or `\fbox{...}` in `text`, with balanced braces.
pub fn last_boxed(text: &str) -> Option<&str> {
    let at = text
        .rfind("\\boxed{")
        .map(|i| i + 7)
        .or_else(|| text.rfind("\\fbox{").map(|i| i + 6))?;
    let mut depth = 1usize;
    for (i, c) in text[at..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[at..at + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The upper-case letter a reference like `B`, `(b)`, `B.` names, if it is one of `letters`.
fn single_letter(s: &str, letters: &str) -> Option<char> {
    let core: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && !"()[]{}.:*$\\".contains(*c))
        .collect();
    let mut chars = core.chars();
    let c = chars.next()?.to_ascii_uppercase();
    (chars.next().is_none() && letters.contains(c)).then_some(c)
}

/// The option letter a completion chose, trying the forms from most to least explicit:
/// the whole answer is a letter; "answer is (B)" / "Answer: B" (the last such); "(B)";
/// a line starting "B." or "B)"; a single distinct stand-alone capital letter.
pub fn extract_choice(text: &str, letters: &str) -> Option<char> {
    if let Some(c) = single_letter(text, letters) {
        return Some(c);
    }
    static FORMS: OnceLock<[Regex; 4]> = OnceLock::new();
    let forms = FORMS.get_or_init(|| {
        [
            Regex::new(
                r"(?i:answer)\s*(?i:is)?\s*[:\-]?\s*(?i:option)?\s*[\(\[]?\s*(?:([A-Z])\b|([a-z])[\)\]])",
            )
            .expect("valid"),
            Regex::new(r"\(([A-Za-z])\)").expect("valid"),
            Regex::new(r"(?m)^\s*\**([A-Z])\**\s*[.):]").expect("valid"),
            Regex::new(r"\b([A-Z])\b").expect("valid"),
        ]
    });
    let pick = |caps: regex::Captures| -> Option<char> {
        let m = caps.get(1).or_else(|| caps.get(2))?;
        m.as_str().chars().next().map(|c| c.to_ascii_uppercase())
    };
    let valid = |c: &char| letters.contains(*c);
    if let Some(c) = forms[0]
        .captures_iter(text)
        .filter_map(pick)
        .filter(valid)
        .last()
    {
        return Some(c);
    }
    if let Some(c) = forms[1]
        .captures_iter(text)
        .filter_map(pick)
        .filter(valid)
        .last()
    {
        return Some(c);
    }
    if let Some(c) = forms[2].captures_iter(text).filter_map(pick).find(valid) {
        return Some(c);
    }
    let mut standalone: Vec<char> = forms[3]
        .captures_iter(text)
        .filter_map(pick)
        .filter(valid)
        .collect();
    standalone.sort_unstable();
    standalone.dedup();
    match standalone.as_slice() {
        [c] => Some(*c),
        _ => None,
    }
}

/// The last `[x1, y1, x2, y2]` box in `text`.
pub fn last_box(text: &str) -> Option<[f64; 4]> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        let n = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*";
        Regex::new(&format!(r"\[{n},{n},{n},{n}\]")).expect("valid")
    });
    let caps = re.captures_iter(text).last()?;
    let mut b = [0.0; 4];
    for (i, slot) in b.iter_mut().enumerate() {
        *slot = caps.get(i + 1)?.as_str().parse().ok()?;
    }
    b.iter().all(|v: &f64| v.is_finite()).then_some(b)
}

fn valid_box(b: &[f64; 4]) -> bool {
    b.iter().all(|v| v.is_finite()) && b[0] < b[2] && b[1] < b[3]
}

/// Intersection over union of two boxes; a degenerate or inverted predicted box scores 0.
pub fn box_iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let area = |x: &[f64; 4]| (x[2] - x[0]).max(0.0) * (x[3] - x[1]).max(0.0);
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// math_equal: a small evaluator for numeric answers written in plain text or simple LaTeX.

/// A number kept exact while it is rational and small enough for `i128`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Rat(i128, i128),
    Real(f64),
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl Num {
    fn rat(n: i128, d: i128) -> Option<Num> {
        if d == 0 {
            return None;
        }
        // Unsigned magnitudes, because `i128::MIN.abs()` overflows.
        let g = gcd(n.unsigned_abs(), d.unsigned_abs()).max(1);
        let Ok(g) = i128::try_from(g) else {
            return Some(Num::Real(n as f64 / d as f64));
        };
        let (n, d) = (n / g, d / g);
        Some(if d < 0 {
            match (n.checked_neg(), d.checked_neg()) {
                (Some(n), Some(d)) => Num::Rat(n, d),
                _ => Num::Real(n as f64 / d as f64),
            }
        } else {
            Num::Rat(n, d)
        })
    }

    fn f(self) -> f64 {
        match self {
            Num::Rat(n, d) => n as f64 / d as f64,
            Num::Real(x) => x,
        }
    }

    fn add(self, o: Num) -> Option<Num> {
        if let (Num::Rat(a, b), Num::Rat(c, d)) = (self, o) {
            let exact = (|| {
                let n = a.checked_mul(d)?.checked_add(c.checked_mul(b)?)?;
                Num::rat(n, b.checked_mul(d)?)
            })();
            if exact.is_some() {
                return exact;
            }
        }
        Some(Num::Real(self.f() + o.f()))
    }

    fn neg(self) -> Num {
        match self {
            Num::Rat(n, d) => n
                .checked_neg()
                .map_or(Num::Real(-(n as f64) / d as f64), |n| Num::Rat(n, d)),
            Num::Real(x) => Num::Real(-x),
        }
    }

    fn mul(self, o: Num) -> Option<Num> {
        if let (Num::Rat(a, b), Num::Rat(c, d)) = (self, o) {
            if let (Some(n), Some(m)) = (a.checked_mul(c), b.checked_mul(d)) {
                return Num::rat(n, m);
            }
        }
        Some(Num::Real(self.f() * o.f()))
    }

    fn recip(self) -> Option<Num> {
        match self {
            Num::Rat(n, d) => Num::rat(d, n),
            Num::Real(x) if x != 0.0 => Some(Num::Real(1.0 / x)),
            Num::Real(_) => None,
        }
    }

    fn pow(self, e: Num) -> Option<Num> {
        if let Num::Rat(k, 1) = e {
            if k.unsigned_abs() <= 64 {
                let mut acc = Num::Rat(1, 1);
                for _ in 0..k.unsigned_abs() {
                    acc = acc.mul(self)?;
                }
                return if k < 0 { acc.recip() } else { Some(acc) };
            }
        }
        let r = self.f().powf(e.f());
        r.is_finite().then_some(Num::Real(r))
    }
}

/// Recursive-descent parser over normalised answer text (no spaces, `\frac` forms unified).
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

const MAX_DEPTH: usize = 64;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.pos..].starts_with(lit.as_bytes()) {
            self.pos += lit.len();
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn expr(&mut self) -> Option<Num> {
        self.enter()?;
        let mut acc = self.term()?;
        loop {
            if self.eat("+") {
                acc = acc.add(self.term()?)?;
            } else if self.eat("-") {
                acc = acc.add(self.term()?.neg())?;
            } else {
                break;
            }
        }
        self.depth -= 1;
        Some(acc)
    }

    fn term(&mut self) -> Option<Num> {
        let mut acc = self.unary()?;
        loop {
            if self.eat("*") {
                acc = acc.mul(self.unary()?)?;
            } else if self.eat("/") {
                acc = acc.mul(self.unary()?.recip()?)?;
            } else if self.starts_primary() {
                // Implicit multiplication, as in `2\sqrt{3}` or `3(4)`.
                acc = acc.mul(self.power()?)?;
            } else {
                break;
            }
        }
        Some(acc)
    }

    fn starts_primary(&self) -> bool {
        match self.peek() {
            Some(b'(' | b'{') => true,
            Some(b'\\') => {
                self.s[self.pos..].starts_with(b"\\frac")
                    || self.s[self.pos..].starts_with(b"\\sqrt")
                    || self.s[self.pos..].starts_with(b"\\pi")
            }
            _ => false,
        }
    }

    fn unary(&mut self) -> Option<Num> {
        self.enter()?;
        let v = if self.eat("-") {
            self.unary()?.neg()
        } else if self.eat("+") {
            self.unary()?
        } else {
            self.power()?
        };
        self.depth -= 1;
        Some(v)
    }

    fn power(&mut self) -> Option<Num> {
        let base = self.primary()?;
        if self.eat("^") {
            let e = self.argument()?;
            return base.pow(e);
        }
        Some(base)
    }

    /// A LaTeX argument: a braced expression or a single digit (`\frac12`).
    fn argument(&mut self) -> Option<Num> {
        if self.eat("{") {
            let v = self.expr()?;
            self.eat("}").then_some(v)
        } else {
            let d = self.peek().filter(u8::is_ascii_digit)?;
            self.pos += 1;
            Some(Num::Rat((d - b'0') as i128, 1))
        }
    }

    fn primary(&mut self) -> Option<Num> {
        self.enter()?;
        let v = if self.eat("(") {
            let v = self.expr()?;
            self.eat(")").then_some(v)?
        } else if self.eat("{") {
            let v = self.expr()?;
            self.eat("}").then_some(v)?
        } else if self.eat("\\frac") {
            let n = self.argument()?;
            let d = self.argument()?;
            n.mul(d.recip()?)?
        } else if self.eat("\\sqrt") {
            let x = self.argument()?.f();
            if x < 0.0 {
                return None;
            }
            let r = x.sqrt();
            // Keep perfect squares exact so `\sqrt{4}` equals 2 exactly.
            if r.fract() == 0.0 && r < 1e15 {
                Num::Rat(r as i128, 1)
            } else {
                Num::Real(r)
            }
        } else if self.eat("\\pi") {
            Num::Real(std::f64::consts::PI)
        } else {
            self.number()?
        };
        self.depth -= 1;
        Some(v)
    }

    fn number(&mut self) -> Option<Num> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let int_end = self.pos;
        let mut frac = "";
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let f0 = self.pos;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
            frac = std::str::from_utf8(&self.s[f0..self.pos]).ok()?;
        }
        let int = std::str::from_utf8(&self.s[start..int_end]).ok()?;
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let digits = format!("{int}{frac}");
        if digits.len() <= 36 {
            let n: i128 = digits.parse().ok()?;
            Num::rat(n, 10i128.pow(frac.len() as u32))
        } else {
            format!("{int}.{frac}0").parse().ok().map(Num::Real)
        }
    }
}

fn parse_math(s: &str) -> Option<Num> {
    if s.is_empty() || !s.is_ascii() {
        return None;
    }
    let mut p = Parser {
        s: s.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let v = p.expr()?;
    (p.pos == s.len() && v.f().is_finite()).then_some(v)
}

/// Normalises an answer: takes the last `\boxed{}`, strips math delimiters, spacing commands,
/// `\left`/`\right`, degree signs, dollar signs and thousands commas, unifies `\dfrac`/`\tfrac`,
/// `\cdot`/`\times`/`\div`, and keeps the right side of the last `=`.
fn normalise_math(s: &str) -> String {
    let s = last_boxed(s).unwrap_or(s);
    let mut t = s.trim().to_string();
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\displaystyle", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("~", ""),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("°", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\(", ""),
        ("\\)", ""),
        ("\\[", ""),
        ("\\]", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\cdot", "*"),
        ("\\times", "*"),
        ("\\div", "/"),
        ("\\%", "%"),
        ("{,}", ""),
    ] {
        t = t.replace(from, to);
    }
    static TEXT: OnceLock<Regex> = OnceLock::new();
    let text = TEXT
        .get_or_init(|| Regex::new(r"\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}").expect("valid"));
    t = text.replace_all(&t, "$1").into_owned();
    t.retain(|c| !c.is_whitespace());
    if let Some(i) = t.rfind('=') {
        t = t[i + 1..].to_string();
    }
    static THOUSANDS: OnceLock<Regex> = OnceLock::new();
    let thousands =
        THOUSANDS.get_or_init(|| Regex::new(r"(\d),(\d{3})(?:\b|$|[^\d])").expect("valid"));
    // Each pass removes one comma per group; repeat until stable (`1,234,567`).
    loop {
        let next = thousands
            .replace_all(&t, |c: &regex::Captures| {
                let whole = c.get(0).map_or("", |m| m.as_str());
                format!("{}{}", &c[1], &whole[2..])
            })
            .into_owned();
        if next == t {
            break;
        }
        t = next;
    }
    t.trim_end_matches('.').to_string()
}

/// The numeric readings of a normalised answer: a trailing `%` allows both `x` and `x/100`,
/// and trailing units (letters) are dropped when the rest is a number.
fn math_values(t: &str) -> Vec<Num> {
    let (body, percent) = match t.strip_suffix('%') {
        Some(b) => (b, true),
        None => (t, false),
    };
    let value = parse_math(body).or_else(|| {
        let stripped = body.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        (stripped.len() < body.len())
            .then(|| parse_math(stripped))
            .flatten()
    });
    let Some(v) = value else {
        return Vec::new();
    };
    if percent {
        let hundredth = v.mul(Num::Rat(1, 100)).unwrap_or(Num::Real(v.f() / 100.0));
        vec![v, hundredth]
    } else {
        vec![v]
    }
}

fn nums_equal(a: Num, b: Num, rel_tol: f64) -> bool {
    match (a, b) {
        (Num::Rat(p, q), Num::Rat(r, s)) => p == r && q == s,
        _ => {
            let (x, y) = (a.f(), b.f());
            (x - y).abs() <= rel_tol * x.abs().max(y.abs()).max(1.0)
        }
    }
}

/// Whether two answers are mathematically equal: as numbers when both read as numbers (exact
/// for rationals), else as normalised strings.
pub fn math_equal(answer: &str, reference: &str, rel_tol: f64) -> bool {
    let a = normalise_math(answer);
    let b = normalise_math(reference);
    if a.is_empty() || b.is_empty() {
        return false;
    }
    let (va, vb) = (math_values(&a), math_values(&b));
    if !va.is_empty() && !vb.is_empty() {
        return va
            .iter()
            .any(|x| vb.iter().any(|y| nums_equal(*x, *y, rel_tol)));
    }
    a == b
}

// ---------------------------------------------------------------------------------------------
// Running verifiers over a batch.

/// A verifier call that panicked, with enough of the sample to find it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifierFailure {
    pub verifier: String,
    pub sample: String,
    pub completion: String,
    pub message: String,
}

impl fmt::Display for VerifierFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "verifier `{}` panicked on sample {} (completion `{}`): {}",
            self.verifier, self.sample, self.completion, self.message
        )
    }
}

/// Calls one verifier on one sample, catching a panic. A non-finite score is turned into
/// `NotApplicable`, because it would poison every mean downstream.
pub fn verify_caught(verifier: &dyn Verify, sample: &Sample) -> Result<Outcome, VerifierFailure> {
    match catch_unwind(AssertUnwindSafe(|| verifier.verify(sample))) {
        Ok(Outcome::Score(s)) if !s.is_finite() => Ok(Outcome::NotApplicable(format!(
            "verifier `{}` gave a non-finite score {s}",
            verifier.name()
        ))),
        Ok(outcome) => Ok(outcome),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic with a non-text payload".to_string());
            Err(VerifierFailure {
                verifier: verifier.name().to_string(),
                sample: sample.id.to_string(),
                completion: excerpt(sample.completion),
                message,
            })
        }
    }
}

/// The outcomes of a set of verifiers on a batch: `outcomes[sample][verifier]`. A call that
/// panicked is `NotApplicable` in the table and listed in `failures`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreTable {
    pub outcomes: Vec<Vec<Outcome>>,
    pub failures: Vec<VerifierFailure>,
}

pub fn score_batch(verifiers: &[&dyn Verify], samples: &[Sample]) -> ScoreTable {
    let mut failures = Vec::new();
    let outcomes = samples
        .iter()
        .map(|sample| {
            verifiers
                .iter()
                .map(|v| match verify_caught(*v, sample) {
                    Ok(o) => o,
                    Err(failure) => {
                        let reason = failure.to_string();
                        failures.push(failure);
                        Outcome::NotApplicable(reason)
                    }
                })
                .collect()
        })
        .collect();
    ScoreTable { outcomes, failures }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn build(v: Value) -> Verifier {
        Verifier::new(serde_json::from_value(v).unwrap()).unwrap()
    }

    fn run(v: &Verifier, completion: &str, f: &serde_json::Map<String, Value>) -> Outcome {
        v.verify(&Sample {
            id: "t:0",
            prompt: "",
            completion,
            fields: f,
            completion_tokens: None,
        })
    }

    /// Checks (completion, reference, expected score) rows against one verifier.
    fn table(v: &Verifier, rows: &[(&str, Value, f64)]) {
        for (completion, reference, want) in rows {
            let f = fields(json!({ "answer": reference }));
            assert_eq!(
                run(v, completion, &f),
                Outcome::Score(*want),
                "{:?} on `{completion}` vs {reference}",
                v.config().kind
            );
        }
    }

    #[test]
    fn extractors_and_chains() {
        let tag = Extractor::Tag {
            name: "answer".into(),
        };
        assert_eq!(tag.apply("x <answer> 42 </answer>").as_deref(), Some("42"));
        assert_eq!(
            tag.apply("<answer>1</answer> then <answer>2</answer>")
                .as_deref(),
            Some("2")
        );
        assert_eq!(tag.apply("<answer>unclosed"), None);
        assert_eq!(tag.apply("no tags"), None);
        let after = Extractor::After {
            marker: "####".into(),
        };
        assert_eq!(after.apply("so 3+4=7\n#### 7").as_deref(), Some("7"));
        assert_eq!(after.apply("no marker"), None);
        assert_eq!(
            Extractor::LastNumber
                .apply("1,234 apples and -5.5 pears")
                .as_deref(),
            Some("-5.5")
        );
        assert_eq!(
            Extractor::FirstNumber
                .apply("1,234 apples and -5.5 pears")
                .as_deref(),
            Some("1234")
        );
        assert_eq!(Extractor::LastNumber.apply("none"), None);
        assert_eq!(
            Extractor::Boxed
                .apply(r"so \boxed{\frac{1}{2}} done")
                .as_deref(),
            Some(r"\frac{1}{2}")
        );
        let chain = [tag, Extractor::LastNumber];
        assert_eq!(
            extract_chain(&chain, "<answer>The total is $1,250.</answer>").as_deref(),
            Some("1250")
        );
        assert_eq!(extract_chain(&chain, "<answer>none</answer>"), None);
        assert_eq!(extract_chain(&[], "as is").as_deref(), Some("as is"));
    }

    #[test]
    fn numbers_in_text() {
        let vals = |s: &str| find_numbers(s).iter().map(|n| n.value).collect::<Vec<_>>();
        assert_eq!(vals("3-5"), vec![3.0, 5.0]);
        assert_eq!(vals("x is -3 and +2"), vec![-3.0, 2.0]);
        assert_eq!(vals("1,234,567.5 or 12,34"), vec![1234567.5, 12.0, 34.0]);
        assert_eq!(vals(".5 and 1e3"), vec![0.5, 1000.0]);
        assert_eq!(leading_number("  122abc"), Some(122.0));
        assert_eq!(leading_number("-7 apples"), Some(-7.0));
        assert_eq!(leading_number("abc 122"), None);
    }

    #[test]
    fn regex_full_and_partial() {
        let full = build(
            json!({"name": "f", "kind": "regex", "pattern": "<answer>.*</answer>", "mode": "full"}),
        );
        let partial =
            build(json!({"name": "p", "kind": "regex", "pattern": "<answer>.*</answer>"}));
        let f = fields(json!({}));
        assert_eq!(run(&full, "<answer>1</answer>", &f), Outcome::Score(1.0));
        assert_eq!(run(&full, "so <answer>1</answer>", &f), Outcome::Score(0.0));
        assert_eq!(
            run(&partial, "so <answer>1</answer>", &f),
            Outcome::Score(1.0)
        );
        assert_eq!(run(&partial, "no answer", &f), Outcome::Score(0.0));
        // The design's format reward: anchored in the pattern itself, dot matches newlines.
        let fmt = build(
            json!({"name": "format", "kind": "regex", "pattern": "(?s)^<answer>.*</answer>$"}),
        );
        assert_eq!(run(&fmt, "<answer>\n7\n</answer>", &f), Outcome::Score(1.0));
        assert_eq!(
            run(&fmt, "<answer>7</answer> extra", &f),
            Outcome::Score(0.0)
        );
        // Alternations stay inside the full-match anchors.
        let alt = build(json!({"name": "a", "kind": "regex", "pattern": "yes|no", "mode": "full"}));
        assert_eq!(run(&alt, "yes", &f), Outcome::Score(1.0));
        assert_eq!(run(&alt, "yesno", &f), Outcome::Score(0.0));
        let bad = Verifier::new(
            serde_json::from_value(json!({"name": "bad", "kind": "regex", "pattern": "(unclosed"}))
                .unwrap(),
        )
        .unwrap_err();
        assert!(bad.to_string().contains("verifier `bad`"), "{bad}");
    }

    #[test]
    fn exact_with_normalisation() {
        let plain = build(json!({"name": "e", "kind": "exact", "expected": "answer"}));
        table(
            &plain,
            &[
                ("Paris", json!("Paris"), 1.0),
                ("  Paris \n", json!("Paris"), 1.0),
                ("paris", json!("Paris"), 0.0),
                ("Paris, France", json!("Paris"), 0.0),
                ("42", json!(42), 1.0),
            ],
        );
        let loose = build(json!({"name": "e", "kind": "exact", "expected": "answer",
            "ignore_case": true, "collapse_whitespace": true}));
        table(
            &loose,
            &[
                ("new   YORK", json!("New York"), 1.0),
                ("newyork", json!("New York"), 0.0),
            ],
        );
        let strict =
            build(json!({"name": "e", "kind": "exact", "expected": "answer", "trim": false}));
        table(&strict, &[(" a", json!("a"), 0.0), ("a", json!("a"), 1.0)]);
        // Missing, null and structured references are not applicable, never a silent 0.
        for f in [json!({}), json!({"answer": null}), json!({"answer": [1]})] {
            assert!(matches!(
                run(&plain, "x", &fields(f)),
                Outcome::NotApplicable(_)
            ));
        }
    }

    #[test]
    fn numeric_table() {
        let last = build(json!({"name": "n", "kind": "numeric", "expected": "answer"}));
        table(
            &last,
            &[
                ("The answer is 72", json!("72"), 1.0),
                ("so 3 + 4 = 7", json!(7), 1.0),
                ("costs $1,250 total", json!("1250"), 1.0),
                ("costs 1250", json!("1,250"), 1.0),
                ("it is -3", json!("-3"), 1.0),
                ("it is 3", json!("-3"), 0.0),
                ("0.5", json!("0.50"), 1.0),
                ("7 then 8", json!("7"), 0.0),
                ("no number", json!("7"), 0.0),
                ("12.0000001", json!("12"), 1.0),
                ("12.001", json!("12"), 0.0),
                ("it costs 18 dollars", json!("$18"), 1.0),
                ("so 7", json!("7."), 1.0),
                ("+4", json!("+4"), 1.0),
            ],
        );
        let leading =
            build(json!({"name": "n", "kind": "numeric", "expected": "answer", "pick": "leading"}));
        table(
            &leading,
            &[
                ("122 is the sum", json!("122"), 1.0),
                ("sum 122", json!("122"), 0.0),
                ("-5", json!("-5"), 1.0),
                ("1225", json!("122"), 0.0),
            ],
        );
        let first =
            build(json!({"name": "n", "kind": "numeric", "expected": "answer", "pick": "first"}));
        table(
            &first,
            &[
                ("a 7 then 8", json!("7"), 1.0),
                ("a 8 then 7", json!("7"), 0.0),
            ],
        );
        let tol =
            build(json!({"name": "n", "kind": "numeric", "expected": "answer", "abs_tol": 0.5}));
        table(&tol, &[("3.4", json!(3), 1.0), ("3.6", json!(3), 0.0)]);
        let rel = build(
            json!({"name": "n", "kind": "numeric", "expected": "answer", "abs_tol": 0.0, "rel_tol": 0.01}),
        );
        table(
            &rel,
            &[("1005", json!(1000), 1.0), ("1011", json!(1000), 0.0)],
        );
        // A reference that is not a single number is not applicable.
        for r in [json!("seven"), json!("3 or 4"), json!(true)] {
            let out = run(&last, "3", &fields(json!({ "answer": r })));
            assert!(matches!(out, Outcome::NotApplicable(_)), "{r}: {out:?}");
        }
        assert!(Verifier::new(
            serde_json::from_value(
                json!({"name": "n", "kind": "numeric", "expected": "a", "abs_tol": -1.0})
            )
            .unwrap()
        )
        .is_err());
    }

    #[test]
    fn math_equal_table() {
        let v = build(json!({"name": "m", "kind": "math_equal", "expected": "answer"}));
        table(
            &v,
            &[
                ("42", json!("42"), 1.0),
                ("42.0", json!(42), 1.0),
                ("0.5", json!(r"\frac{1}{2}"), 1.0),
                (r"\dfrac{3}{4}", json!("0.75"), 1.0),
                (r"\tfrac12", json!("1/2"), 1.0),
                (r"The answer is \boxed{\frac{2}{4}}.", json!("0.5"), 1.0),
                (r"$\frac{-1}{3}$", json!(r"-\frac{1}{3}"), 1.0),
                ("50%", json!("0.5"), 1.0),
                (r"50\%", json!("50"), 1.0),
                ("x = 12", json!("12"), 1.0),
                ("1,000,000", json!("1000000"), 1.0),
                (r"\$18", json!("18"), 1.0),
                ("90^\\circ", json!("90"), 1.0),
                (r"2\sqrt{2}", json!(r"\sqrt{8}"), 1.0),
                (r"\sqrt{4}", json!("2"), 1.0),
                ("5 cm", json!("5"), 1.0),
                ("(1+2)*3", json!("9"), 1.0),
                ("2^{10}", json!("1024"), 1.0),
                (r"\left( \frac{1}{2} \right)", json!("0.5"), 1.0),
                (r"\text{(B)}", json!("(B)"), 1.0),
                // Negative cases.
                ("0.333", json!(r"\frac{1}{3}"), 0.0),
                ("43", json!("42"), 0.0),
                ("-0.5", json!(r"\frac{1}{2}"), 0.0),
                ("51%", json!("0.5"), 0.0),
                (r"\frac{1}{0}", json!("1"), 0.0),
                ("", json!("1"), 0.0),
                ("x", json!("y"), 0.0),
                ("{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{1}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}", json!("1"), 0.0),
            ],
        );
        assert!(matches!(
            run(&v, "1", &fields(json!({"answer": "  "}))),
            Outcome::NotApplicable(_)
        ));
    }

    #[test]
    fn choice_table() {
        let v = build(json!({"name": "c", "kind": "choice", "expected": "answer"}));
        table(
            &v,
            &[
                ("B", json!("B"), 1.0),
                ("(B)", json!("B"), 1.0),
                ("B.", json!("(B)"), 1.0),
                ("b", json!("B"), 1.0),
                ("The answer is (C).", json!("C"), 1.0),
                ("Answer: D", json!("D"), 1.0),
                ("answer: (e)", json!("E"), 1.0),
                ("I first thought A, but the answer is B", json!("B"), 1.0),
                ("Looking at the options, (H) fits.", json!("H"), 1.0),
                ("C. Because the sum is even.", json!("C"), 1.0),
                ("I pick G here", json!("G"), 1.0),
                // Negative cases.
                ("The answer is (C).", json!("B"), 0.0),
                ("A cat or B", json!("A"), 0.0),
                ("the answer is a number", json!("A"), 0.0),
                ("(Z)", json!("A"), 0.0),
                ("nothing here", json!("A"), 0.0),
            ],
        );
        let four =
            build(json!({"name": "c", "kind": "choice", "expected": "answer", "letters": "ABCD"}));
        table(&four, &[("E", json!("A"), 0.0)]);
        assert!(matches!(
            run(&four, "E", &fields(json!({"answer": "E"}))),
            Outcome::NotApplicable(_)
        ));
        assert!(matches!(
            run(&v, "B", &fields(json!({"answer": "Bob"}))),
            Outcome::NotApplicable(_)
        ));
    }

    #[test]
    fn iou_table() {
        let v = build(json!({"name": "iou", "kind": "iou", "expected": "answer"}));
        let b = json!([0, 0, 10, 10]);
        table(
            &v,
            &[
                ("[0, 0, 10, 10]", b.clone(), 1.0),
                // Half overlap: intersection 50, union 150.
                (r#"{"bbox_2d": [5,0,15,10]}"#, b.clone(), 50.0 / 150.0),
                ("[20,20,30,30]", b.clone(), 0.0),
                ("no box", b.clone(), 0.0),
                ("[10,10,0,0]", b.clone(), 0.0),
                ("first [0,0,10,10] then [0,0,5,10]", b.clone(), 0.5),
                ("[0.0, 0.0, 10.0, 10.0]", json!("[0,0,10,10]"), 1.0),
            ],
        );
        let t =
            build(json!({"name": "iou", "kind": "iou", "expected": "answer", "threshold": 0.5}));
        table(
            &t,
            &[
                ("[0,0,5,10]", b.clone(), 1.0),
                ("[5,0,15,10]", b.clone(), 0.0),
            ],
        );
        for bad in [
            json!([0, 0, 10]),
            json!([5, 5, 1, 1]),
            json!("box"),
            json!(3),
        ] {
            assert!(matches!(
                run(&v, "[0,0,1,1]", &fields(json!({ "answer": bad }))),
                Outcome::NotApplicable(_)
            ));
        }
    }

    #[test]
    fn length_penalty_is_dapo_overlong_shaping() {
        let v = build(
            json!({"name": "len", "kind": "length_penalty", "unit": "words", "target": 4, "limit": 8}),
        );
        let f = fields(json!({}));
        assert_eq!(run(&v, "one two three", &f), Outcome::Score(0.0));
        assert_eq!(run(&v, "a b c d e f", &f), Outcome::Score(-0.5));
        assert_eq!(run(&v, "a b c d e f g h i", &f), Outcome::Score(-1.0));
        let chars = build(
            json!({"name": "len", "kind": "length_penalty", "unit": "chars", "target": 2, "limit": 6}),
        );
        assert_eq!(run(&chars, "abc", &f), Outcome::Score(-0.25));
        let tokens =
            build(json!({"name": "len", "kind": "length_penalty", "target": 10, "limit": 20}));
        assert!(matches!(run(&tokens, "x", &f), Outcome::NotApplicable(_)));
        let out = tokens.verify(&Sample {
            id: "t",
            prompt: "",
            completion: "x",
            fields: &f,
            completion_tokens: Some(15),
        });
        assert_eq!(out, Outcome::Score(-0.5));
        assert!(Verifier::new(
            serde_json::from_value(
                json!({"name": "len", "kind": "length_penalty", "target": 5, "limit": 5})
            )
            .unwrap()
        )
        .is_err());
    }

    #[test]
    fn extraction_failure_scores_zero_but_missing_reference_is_not_applicable() {
        let v = build(
            json!({"name": "acc", "kind": "numeric", "expected": "answer",
            "extract": [{"kind": "tag", "name": "answer"}]}),
        );
        let f = fields(json!({"answer": "7"}));
        assert_eq!(run(&v, "<answer>7</answer>", &f), Outcome::Score(1.0));
        assert_eq!(run(&v, "7", &f), Outcome::Score(0.0));
        assert!(matches!(
            run(&v, "<answer>7</answer>", &fields(json!({"question": "?"}))),
            Outcome::NotApplicable(r) if r.contains("`answer`")
        ));
    }

    struct Panicky;
    impl Verify for Panicky {
        fn name(&self) -> &str {
            "panicky"
        }
        fn verify(&self, sample: &Sample) -> Outcome {
            if sample.completion.contains("boom") {
                panic!("cannot parse {}", sample.completion);
            }
            Outcome::Score(f64::NAN)
        }
    }

    #[test]
    fn a_panic_is_caught_and_reported_with_the_sample() {
        let exact = build(json!({"name": "e", "kind": "exact", "expected": "answer"}));
        let f = fields(json!({"answer": "ok"}));
        let samples: Vec<Sample> = ["ok", "boom!"]
            .iter()
            .enumerate()
            .map(|(i, c)| Sample {
                id: if i == 0 { "src:1" } else { "src:2" },
                prompt: "p",
                completion: c,
                fields: &f,
                completion_tokens: None,
            })
            .collect();
        let verifiers: [&dyn Verify; 2] = [&exact, &Panicky];
        let table = score_batch(&verifiers, &samples);
        assert_eq!(table.outcomes[0][0], Outcome::Score(1.0));
        // A non-finite score is refused rather than passed on.
        assert!(
            matches!(&table.outcomes[0][1], Outcome::NotApplicable(r) if r.contains("non-finite"))
        );
        assert_eq!(table.outcomes[1][0], Outcome::Score(0.0));
        assert!(
            matches!(&table.outcomes[1][1], Outcome::NotApplicable(r) if r.contains("panicked"))
        );
        assert_eq!(table.failures.len(), 1);
        let failure = &table.failures[0];
        assert_eq!(failure.verifier, "panicky");
        assert_eq!(failure.sample, "src:2");
        assert_eq!(failure.completion, "boom!");
        assert!(failure.message.contains("cannot parse boom!"));
    }

    /// Random strings built from the tokens the parsers care about must never panic.
    #[test]
    fn verifiers_never_panic_on_garbage() {
        let pieces = [
            "1",
            "0",
            "9",
            "170141183460469231731687303715884105727",
            "999999999999999999999999999999999999",
            ".",
            ",",
            "-",
            "+",
            "*",
            "/",
            "^",
            "%",
            "(",
            ")",
            "{",
            "}",
            "[",
            "]",
            "\\frac",
            "\\sqrt",
            "\\boxed{",
            "$",
            "=",
            "<answer>",
            "</answer>",
            "####",
            "B",
            "a",
            "é",
            "答",
            " ",
            "\n",
            "e5",
            "\\pi",
            "answer is",
            "(C)",
            "D.",
            "\\left(",
            "{,}",
            "\\%",
            "°",
        ];
        let configs = [
            json!({"name": "n", "kind": "numeric", "expected": "answer", "pick": "leading"}),
            json!({"name": "m", "kind": "math_equal", "expected": "answer"}),
            json!({"name": "c", "kind": "choice", "expected": "answer"}),
            json!({"name": "i", "kind": "iou", "expected": "answer"}),
            json!({"name": "e", "kind": "exact", "expected": "answer", "ignore_case": true,
                   "extract": [{"kind": "tag", "name": "answer"}, {"kind": "boxed"}]}),
        ];
        let verifiers: Vec<Verifier> = configs.into_iter().map(build).collect();
        let mut rng = crate::train::rng::HostRng::new(1);
        let text = |rng: &mut crate::train::rng::HostRng| {
            let n = rng.below(24) as usize;
            (0..n)
                .map(|_| pieces[rng.below(pieces.len() as u64) as usize])
                .collect::<String>()
        };
        for _ in 0..3000 {
            let completion = text(&mut rng);
            let reference = text(&mut rng);
            let f = fields(json!({ "answer": reference }));
            for v in &verifiers {
                let sample = Sample {
                    id: "fuzz",
                    prompt: "",
                    completion: &completion,
                    fields: &f,
                    completion_tokens: None,
                };
                verify_caught(v, &sample).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    #[test]
    fn configs_round_trip_through_json() {
        let config: VerifierConfig = serde_json::from_value(json!({
            "name": "accuracy", "kind": "numeric", "expected": "answer",
            "extract": [{"kind": "tag", "name": "answer"}, {"kind": "last_number"}]
        }))
        .unwrap();
        assert_eq!(
            config.kind,
            VerifierKind::Numeric {
                expected: "answer".into(),
                pick: NumberPick::Last,
                abs_tol: 1e-6,
                rel_tol: 0.0
            }
        );
        let back: VerifierConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
    }
}
